"""Checkpoints of a training run (orbax ``CheckpointManager``).

A workdir's ``checkpoints/<step>/`` holds everything a run needs to continue
exactly where it stopped:

* ``state``: params, BatchStats (``*-BN`` nets), optimiser state (momentum,
  the learning rate, the update count) and the step (orbax StandardSave,
  sharded arrays written by every host);
* ``data``: the grain training-iterator state, one JSON file per process
  (grain's own orbax handler), so a resumed run sees the same batches;
* ``controller``: the plateau controller (best accuracy, drops, history);
* ``metadata``: what rebuilds the model without the config: ``"model"``
  (create_model kwargs), ``"input_convention"``, ``"class_names"`` (the keys
  of ``vgg_jax.weights.load_pretrained``'s metadata), plus the step.

The RNG needs no state: the dropout key of step t is ``fold_in(key(seed), t)``.

Saves are asynchronous (orbax copies device arrays to host, then writes in a
thread while training goes on).  Kept: the latest ``keep`` checkpoints plus
the best one by validation top-1 accuracy.  Orbax writes into a temporary
directory and renames it when complete (``_CHECKPOINT_METADATA`` is written
last); a step directory without it, or a temporary directory, is left by a
kill and is moved aside (``checkpoints/incomplete/``) on the next start,
never restored.
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
COMMIT_FILE = "_CHECKPOINT_METADATA"
INCOMPLETE_DIR = "incomplete"
BEST_METRIC = "val_top1"
ITEMS = ("state", "data", "controller", "metadata")


def checkpoint_dir(workdir: str | os.PathLike) -> pathlib.Path:
  return pathlib.Path(workdir).absolute() / CHECKPOINT_DIR


def _is_complete(step_dir: pathlib.Path) -> bool:
  return (step_dir / COMMIT_FILE).is_file() and all(
      (step_dir / item).is_dir() for item in ("state", "metadata"))


def set_aside_incomplete(directory: pathlib.Path) -> list[str]:
  """Moves half-written checkpoints (a kill mid-save) out of orbax's way.

  Only process 0 moves anything; every process then waits for it.  Returns
  the names moved.
  """
  moved = []
  if directory.is_dir() and jax.process_index() == 0:
    for child in sorted(directory.iterdir()):
      if child.name == INCOMPLETE_DIR or not child.is_dir():
        continue
      tmp = ".orbax-checkpoint-tmp" in child.name or child.name.endswith(
          ".tmp")
      if tmp or (child.name.isdigit() and not _is_complete(child)):
        target = directory / INCOMPLETE_DIR / f"{child.name}.{int(time.time())}"
        target.parent.mkdir(exist_ok=True)
        shutil.move(str(child), str(target))
        log.warning("checkpoint %s is incomplete (left by a killed save?); "
                    "moved to %s and ignored", child, target)
        moved.append(child.name)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("vgg_jax_checkpoint_cleanup")
  return moved


class Checkpointer:
  """The run's checkpoints: save / restore / best / latest."""

  def __init__(self, workdir: str | os.PathLike, *, keep: int = 3,
               async_save: bool = True, read_only: bool = False):
    self.directory = checkpoint_dir(workdir)
    if not read_only:
      set_aside_incomplete(self.directory)
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(n=max(1, keep)),
        ocp.checkpoint_managers.BestN(
            get_metric_fn=lambda m: m[BEST_METRIC], n=1,
            keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        best_fn=lambda m: m[BEST_METRIC], best_mode="max",
        preservation_policy=None if read_only else policy,
        enable_async_checkpointing=async_save, read_only=read_only,
        create=not read_only)
    self.manager = ocp.CheckpointManager(self.directory, item_names=ITEMS,
                                         options=options)

  def latest_step(self) -> int | None:
    steps = self.complete_steps()
    return steps[-1] if steps else None

  def complete_steps(self) -> list[int]:
    return sorted(s for s in self.manager.all_steps()
                  if _is_complete(self.directory / str(s)))

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def save(self, step: int, *, state: Any, train_iter: Any,
           controller: dict, metadata: dict,
           metrics: dict | None = None) -> None:
    """Starts an asynchronous save (returns once arrays are on the host)."""
    args = {"state": ocp.args.StandardSave(state),
            "controller": ocp.args.JsonSave(controller),
            "metadata": ocp.args.JsonSave({**metadata, "step": int(step)})}
    if train_iter is not None:
      import grain  # pylint: disable=g-import-not-at-top
      args["data"] = grain.checkpoint.CheckpointSave(train_iter)
    self.manager.save(step, args=ocp.args.Composite(**args),
                      metrics=metrics, force=True)

  def restore(self, step: int, *, abstract_state: Any, train_iter: Any = None
              ) -> tuple[Any, dict, dict]:
    """(state, controller dict, metadata dict); the iterator is set in place."""
    args = {"state": ocp.args.StandardRestore(abstract_state),
            "controller": ocp.args.JsonRestore(),
            "metadata": ocp.args.JsonRestore()}
    if train_iter is not None:
      import grain  # pylint: disable=g-import-not-at-top
      args["data"] = grain.checkpoint.CheckpointRestore(train_iter)
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return restored.state, restored.controller, restored.metadata

  def restore_metadata(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(
        metadata=ocp.args.JsonRestore())).metadata

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def _model_from_metadata(metadata: dict, dtype=None):
  from vgg_jax.models import create_model  # pylint: disable=g-import-not-at-top
  return nnx.eval_shape(lambda: create_model(
      **metadata["model"], rngs=nnx.Rngs(0), dtype=dtype))


def load_model_from_workdir(workdir: str | os.PathLike, *,
                            step: int | None = None, best: bool = False,
                            dtype=None):
  """The trained model of a workdir -> ``(model, metadata)``.

  ``step``: that checkpoint; ``best``: the best by validation top-1;
  default: the latest complete one.  ``metadata`` has the keys of
  ``vgg_jax.weights.load_pretrained``: "model", "input_convention",
  "class_names" (plus "step" and "source").
  """
  workdir = pathlib.Path(workdir).absolute()
  directory = checkpoint_dir(workdir)
  if not directory.is_dir():
    raise FileNotFoundError(
        f"{workdir} has no {CHECKPOINT_DIR}/ directory: not a training "
        "workdir (expected one written by `python -m vgg_jax.main`)")
  ckpt = Checkpointer(workdir, read_only=True)
  try:
    if step is not None and best:
      raise ValueError("give either step or best=True, not both")
    if best:
      step = ckpt.best_step()
      if step is None:
        raise FileNotFoundError(f"{directory} has no checkpoint with a "
                                "validation metric (no evaluation yet?)")
    elif step is None:
      step = ckpt.latest_step()
      if step is None:
        raise FileNotFoundError(f"{directory} holds no complete checkpoint")
    elif step not in ckpt.complete_steps():
      raise FileNotFoundError(
          f"no complete checkpoint for step {step} in {directory}; "
          f"available: {ckpt.complete_steps()}")
    metadata = ckpt.restore_metadata(step)
    model = _model_from_metadata(metadata, dtype)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # Partial restore: only params and BatchStats, not the optimiser state.
    target = {"params": params, "rest": rest}
    restored = ckpt.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item=target,
            restore_args=jax.tree_util.tree_map(
                lambda x: ocp.ArrayRestoreArgs(
                    sharding=jax.sharding.SingleDeviceSharding(
                        jax.local_devices()[0]), dtype=x.dtype), target),
            partial_restore=True))).state
  finally:
    ckpt.close()
  model = nnx.merge(graphdef, restored["params"], restored["rest"])
  metadata = dict(metadata)
  metadata["source"] = f"{workdir} step {step}"
  return model, metadata
