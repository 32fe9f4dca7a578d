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
  of ``vgg_jax.weights.load_pretrained``'s metadata), plus the step;
* ``train_metrics``: the training metrics accumulated since the last logging
  step (sums, exact as JSON numbers), so the first line a resumed run logs
  averages the same steps, bit for bit, as an uninterrupted run's.
  ``drop_metrics_after`` cuts ``metrics.jsonl`` back to the restored step,
  so the log of a resumed run reads as an uninterrupted one's.

The RNG needs no state: the dropout key of step t is ``fold_in(key(seed), t)``.

Saves are asynchronous (orbax copies device arrays to host, then writes in a
thread while training goes on).  Kept: the latest ``keep`` checkpoints plus
the best one by validation top-1 accuracy.  Orbax writes into a temporary
directory and renames it when complete (``_CHECKPOINT_METADATA`` is written
last); a step directory without it, or a temporary directory, is left by a
kill and is moved aside (``checkpoints/incomplete/``) on the next start,
never restored.

A save that fails (disk full, quota, I/O error) raises
``CheckpointWriteError`` naming the step, the directory and the last
complete checkpoint, which stays intact: what the failed save left is
incomplete and is set aside on the next start.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pathlib
import shutil
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
COMMIT_FILE = "_CHECKPOINT_METADATA"
INCOMPLETE_DIR = "incomplete"
BEST_METRIC = "val_top1"
ITEMS = ("state", "data", "controller", "metadata", "train_metrics")


class CheckpointWriteError(OSError):
  """A checkpoint could not be written; earlier complete ones are intact."""


def _oserror_in(exc: BaseException) -> OSError | None:
  """The OSError (or errno-bearing error) behind ``exc``, if any."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.errno is not None:
      return exc
    text = str(exc)
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS):
      if os.strerror(code) in text:
        return OSError(code, os.strerror(code))
    exc = exc.__cause__ or exc.__context__
  return None


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

  def _write_error(self, exc: BaseException, step: int | None
                   ) -> CheckpointWriteError | None:
    err = _oserror_in(exc)
    if err is None:
      return None
    last = self.latest_step()
    hint = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota "
            "is exhausted", errno.EROFS: "the file system is read-only"}.get(
                err.errno, "an I/O error")
    return CheckpointWriteError(
        err.errno,
        f"could not write the checkpoint{f' of step {step}' if step else ''}"
        f" to {self.directory}: {hint} ({err.strerror or err}).  The last "
        f"complete checkpoint ({last if last is not None else 'none'}) is "
        "intact; what this save left is incomplete and is set aside when the "
        "run restarts.  Free space (or lower keep_checkpoints) and rerun the "
        "same command to resume.")

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
           metrics: dict | None = None,
           train_metrics: dict | None = None) -> None:
    """Starts an asynchronous save (returns once arrays are on the host).

    ``train_metrics``: numpy scalars (the running training sums).
    """
    args = {"state": ocp.args.StandardSave(state),
            "controller": ocp.args.JsonSave(controller),
            "metadata": ocp.args.JsonSave({**metadata, "step": int(step)})}
    if train_iter is not None:
      import grain  # pylint: disable=g-import-not-at-top
      args["data"] = grain.checkpoint.CheckpointSave(train_iter)
    if train_metrics is not None:
      args["train_metrics"] = ocp.args.JsonSave(
          {k: {"dtype": str(v.dtype), "value": v.item()}
           for k, v in train_metrics.items()})
    try:
      # Also raises a failure of the previous (asynchronous) save.
      self.manager.save(step, args=ocp.args.Composite(**args),
                        metrics=metrics, force=True)
    except Exception as e:  # pylint: disable=broad-except
      clear = self._write_error(e, step)
      if clear is None:
        raise
      raise clear from e

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

  def restore_train_metrics(self, step: int) -> dict | None:
    """The training-metric sums saved with ``step`` (None: an older
    checkpoint without them)."""
    if not (self.directory / str(step) / "train_metrics").is_dir():
      return None
    saved = self.manager.restore(step, args=ocp.args.Composite(
        train_metrics=ocp.args.JsonRestore())).train_metrics
    return {k: np.asarray(v["value"], dtype=v["dtype"])
            for k, v in saved.items()}

  def wait(self) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      clear = self._write_error(e, None)
      if clear is None:
        raise
      raise clear from e

  def close(self) -> None:
    self.manager.close()


def drop_metrics_after(path: str | os.PathLike, step: int) -> int:
  """Keeps the lines of ``metrics.jsonl`` up to ``step`` (and no torn line).

  A run resumed from the checkpoint of ``step`` logs every later step again;
  without this the file would hold those steps twice (the killed run's and
  the resumed run's).  Written atomically (temporary file, fsync, rename).
  Returns the number of lines dropped.
  """
  path = pathlib.Path(path)
  if not path.exists() or jax.process_index() != 0:
    return 0
  kept, dropped = [], 0
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
      keep = int(record["step"]) <= step
    except (ValueError, KeyError, TypeError):
      keep = False  # a line torn by a kill
    if keep:
      kept.append(line)
    else:
      dropped += 1
  if dropped:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
      f.write("".join(l + "\n" for l in kept))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
    log.info("metrics.jsonl: dropped %d line(s) after step %d (logged by "
             "the interrupted run, logged again on resume)", dropped, step)
  return dropped


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
