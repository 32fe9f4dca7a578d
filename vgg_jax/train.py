"""The paper's training protocol (§3.1): ``train_and_evaluate(config, workdir)``.

One synchronous data-parallel SGD step is jit-compiled over a mesh of every
device of every host (vgg_jax/sharding.py): the global batch is split along
'data', parameters replicated, gradients averaged by XLA, state donated.
The model is used functionally: ``nnx.split`` gives (graphdef, params,
batch stats); the step merges them, runs the net, and returns new arrays.

* Optimiser and lr rule: vgg_jax/optim.py (Caffe-form SGD, coupled weight
  decay, the plateau controller or a fixed schedule).
* Dropout: the key of step t is ``fold_in(key(seed), t)``: reproducible and
  resumable with no RNG state.
* Metrics are accumulated on device and fetched only at logging steps (no
  host-device sync per step).  NaN/Inf: the step keeps the first non-finite
  step on device; the host checks at every logging step and before every
  checkpoint, so no checkpoint holds a non-finite loss.
* Resume order: the workdir's latest complete checkpoint, else
  ``config.init_from`` / ``config.init_from_a``, else scratch (logged).
* SIGTERM (a preempted VM): save a checkpoint at the current step, exit 0.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import pathlib
import signal
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from vgg_jax import checkpointing
from vgg_jax import config_checks
from vgg_jax.eval import evaluators as evaluators_lib
from vgg_jax import fault_injection
from vgg_jax import model_dir
from vgg_jax import input_pipeline
from vgg_jax import optim
from vgg_jax import progress as progress_lib
from vgg_jax import summary_writer
from vgg_jax import sharding as sharding_lib
from vgg_jax import tasks as tasks_lib
from vgg_jax import models as models_lib
from vgg_jax import watchdog as watchdog_lib
from vgg_jax.models import create_model, init_from_a

log = logging.getLogger("vgg_jax.train")

CONFIG_FILE = "config.json"
# Fields that may differ between a workdir's stored config and a resumed run:
# durations and bookkeeping, not the model, data or optimiser.
SAFE_TO_CHANGE = (
    "total_steps", "total_epochs", "total_examples", "log_every_steps",
    "log_every_epochs", "log_every_examples", "checkpoint_every_steps",
    "checkpoint_every_epochs", "checkpoint_every_examples",
    "keep_checkpoints", "stop_after_steps", "async_checkpoints",
    "eval_batch_size", "data.num_workers", "data.num_threads",
    "data.prefetch_buffer_size", "data.data_dir", "init_from", "init_from_a",
    "collective_timeout_s",
    # A restart after a NaN/Inf stop may lower the lr (schedules are
    # functions of the step count, which the checkpoint keeps).
    "lr", "debug_nonfinite_at_step",
)
# Fields added to the configs after some workdirs were written: absent from
# a stored config and at this value, they are the behaviour of that run.
# Fields added after runs were already written, with the default that means
# what those runs did: a workdir whose config.json lacks one still resumes.
ADDED_FIELDS = {"evals.val.type": "classification",
                "optimizer.frozen_layers": [],
                "model.pool_rounding": "floor",
                "data.central_square": False}
DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


class NonFiniteLossError(FloatingPointError):
  pass


# ----------------------------------------------------------------------------
# Durations in natural units.


def duration_steps(config, prefix: str, *, steps_per_epoch: int,
                   batch_size: int, default: int | None = None) -> int | None:
  """``{prefix}_steps`` / ``_examples`` / ``_epochs`` -> steps.

  When several are set the finest unit wins (steps, then examples, then
  epochs), so ``--config.total_steps=100`` overrides a config file's
  ``total_epochs`` (a float field cannot be set to None from the command
  line).  Epochs and examples round to the nearest step (at least 1).
  """
  for unit in ("steps", "examples", "epochs"):
    value = config.get(f"{prefix}_{unit}")
    if value is None:
      continue
    if value < 0:
      raise ValueError(f"{prefix}_{unit} must be >= 0, got {value}")
    if unit == "steps":
      return int(value)
    examples = (value * steps_per_epoch * batch_size if unit == "epochs"
                else value)
    return max(1, int(round(examples / batch_size))) if value else 0
  return default


# ----------------------------------------------------------------------------
# Config checks (all before any compute).


def _flatten_config(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten_config(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def config_to_dict(config) -> dict:
  return json.loads(config.to_json_best_effort())


def check_workdir_config(config, workdir: pathlib.Path, *,
                         write: bool = False) -> None:
  """Checks the workdir's config.json against ``config``; ``write`` stores it.

  A mismatch is an error only when the workdir holds checkpoints (a run to
  resume); a workdir whose earlier start failed before any checkpoint just
  takes the new config.
  """
  path = workdir / CONFIG_FILE
  new = config_to_dict(config)
  ckpt_dir = checkpointing.checkpoint_dir(workdir)
  has_checkpoints = ckpt_dir.is_dir() and any(
      p.name.isdigit() for p in ckpt_dir.iterdir())
  if path.exists() and has_checkpoints:
    old = json.loads(path.read_text())
    a, b = _flatten_config(old), _flatten_config(new)
    diffs = sorted(k for k in set(a) | set(b)
                   if a.get(k, "<absent>") != b.get(k, "<absent>")
                   and k not in SAFE_TO_CHANGE
                   and not (k not in a and k in ADDED_FIELDS
                            and b.get(k) == ADDED_FIELDS[k]))
    if diffs:
      lines = "\n".join(f"  {k}: workdir has {a.get(k, '<absent>')!r}, "
                        f"this run has {b.get(k, '<absent>')!r}"
                        for k in diffs[:20])
      raise ValueError(
          f"workdir {workdir} holds a run with a different config "
          f"({path}):\n{lines}\nUse a new --workdir, or the same config. "
          f"(Only these may change on resume: {', '.join(SAFE_TO_CHANGE)}.)")
  if write and jax.process_index() == 0:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(new, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def model_kwargs(config, info) -> dict:
  """The net's architecture arguments (models.model_kwargs_from_config)."""
  return tasks_lib.get_task(config).adapt_model_kwargs(
      models_lib.model_kwargs_from_config(
          config.model, num_classes=info.num_classes,
          in_channels=info.image_channels))


def compute_dtype(config):
  if config.model.dtype not in DTYPES:
    raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got "
                     f"{config.model.dtype!r}")
  return DTYPES[config.model.dtype]


# ----------------------------------------------------------------------------
# State and step.


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation):
  """(graphdef, state): state = {step, params, rest (BatchStats), opt_state}."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "rest": rest,
           "opt_state": tx.init(params)}
  return graphdef, state


def init_metrics(task: tasks_lib.Task | None = None) -> dict:
  """The task's device-side sums plus the loop's own bookkeeping."""
  task = task or tasks_lib.Classification()
  return {**task.init_metrics(),
          "steps": jnp.zeros((), jnp.int32),
          "first_nonfinite_step": jnp.full((), -1, jnp.int32)}


def train_step_fn(graphdef, tx: optax.GradientTransformation, *, seed: int,
                  task: tasks_lib.Task | None = None):
  """The pure step: (state, metrics, batch) -> (state, metrics).

  Loss and metrics come from ``task`` (vgg_jax/tasks.py; default
  classification); the rest (dropout keys, BatchNorm statistics, the
  optimiser, the non-finite check) is the same for every task.
  """
  task = task or tasks_lib.Classification()

  def step_fn(state, metrics, batch):
    step = state["step"]
    dropout_key = jax.random.fold_in(jax.random.key(seed), step)

    def loss_fn(params):
      # Fresh Variables at this trace level, so BatchNorm may update them.
      rest = jax.tree_util.tree_map(lambda x: x, state["rest"])
      model = nnx.merge(graphdef, params, rest)
      loss, outputs = task.loss(model, batch,
                                rngs=nnx.Rngs(dropout=dropout_key))
      _, _, new_rest = nnx.split(model, nnx.Param, ...)
      return loss, (outputs, new_rest)

    (loss, (outputs, new_rest)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"step": step + 1, "params": params, "rest": new_rest,
                 "opt_state": opt_state}
    bad = metrics["first_nonfinite_step"]
    new_metrics = task.update_metrics(
        {k: v for k, v in metrics.items()
         if k not in ("steps", "first_nonfinite_step")}, loss, outputs, batch)
    new_metrics.update(
        steps=metrics["steps"] + 1,
        first_nonfinite_step=jnp.where(
            (bad < 0) & ~jnp.isfinite(loss), step + 1, bad))
    return new_state, new_metrics

  return step_fn


def make_train_step(graphdef, tx, *, seed: int, mesh, state_shardings,
                    task: tasks_lib.Task | None = None):
  """The jitted step over ``mesh``; state and metrics are donated."""
  rep = sharding_lib.replicated(mesh)
  metric_sh = jax.tree_util.tree_map(lambda _: rep, init_metrics(task))
  batch_sh = sharding_lib.batch_sharding(mesh)
  return jax.jit(train_step_fn(graphdef, tx, seed=seed, task=task),
                 in_shardings=(state_shardings, metric_sh, batch_sh),
                 out_shardings=(state_shardings, metric_sh),
                 donate_argnums=(0, 1))


def make_optimizer(config, *, total_steps: int, steps_per_epoch: int,
                   warmup_steps: int):
  boundaries = [int(round(e * steps_per_epoch))
                for e in config.lr_boundaries_epochs]
  lr = optim.learning_rate_schedule(
      config.lr_schedule, base_lr=config.lr, total_steps=total_steps,
      warmup_steps=warmup_steps, boundaries=boundaries,
      factor=config.lr_factor)
  o = config.optimizer
  return optim.sgd(lr, momentum=o.momentum, weight_decay=o.weight_decay,
                   form=o.form, decay_biases=o.decay_biases,
                   frozen=o.frozen_layers)


# ----------------------------------------------------------------------------
# Initialisation from elsewhere (§3.1).


def copy_matching_layers(dst: nnx.Module, src: nnx.Module) -> list[str]:
  """Copies every parameter/BatchStat of ``src`` with the same path and shape."""
  src_flat = dict(nnx.to_flat_state(nnx.state(src)))
  copied, skipped = [], []
  dst_state = nnx.state(dst)
  for path, var in nnx.to_flat_state(dst_state):
    s = src_flat.get(path)
    if s is not None and s.get_value().shape == var.get_value().shape:
      var.set_value(jnp.asarray(s.get_value(), var.get_value().dtype))
      copied.append("/".join(map(str, path)))
    else:
      skipped.append("/".join(map(str, path)))
  nnx.update(dst, dst_state)
  if not copied:
    raise ValueError("init_from: no layer of the source model matches the "
                     "new model (different net or widths?)")
  if skipped:
    log.info("init_from: kept random init for %s", ", ".join(skipped))
  return copied


# ----------------------------------------------------------------------------
# Logging and preemption.


class _OursOrWarnings(logging.Filter):
  """vgg_jax's own INFO lines, and warnings/errors from anything."""

  def filter(self, record):
    return record.name.startswith("vgg_jax") or record.levelno >= logging.WARNING


def setup_logging(workdir: pathlib.Path) -> None:
  """One log file per host: workdir/log_host{i}.txt (plus stderr).

  orbax's INFO chatter (through absl) is silenced; its warnings stay.
  """
  fmt = logging.Formatter(
      f"%(asctime)s [host {jax.process_index()}] %(levelname)s %(message)s",
      "%H:%M:%S")
  logging.getLogger("vgg_jax").setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)
  root = logging.getLogger()
  for h in list(root.handlers):
    if getattr(h, "_vgg_jax", False):
      root.removeHandler(h)
      h.close()
  handlers = [logging.FileHandler(workdir / f"log_host{jax.process_index()}.txt")]
  # absl.app installs a stderr handler on the root logger; elsewhere add one.
  if not root.handlers:
    handlers.append(logging.StreamHandler(sys.stderr))
  for h in handlers:
    h._vgg_jax = True  # pylint: disable=protected-access
    h.setFormatter(fmt)
    h.addFilter(_OursOrWarnings())
    root.addHandler(h)


class JsonlWriter:
  """Every metric as one JSON line: workdir/metrics.jsonl (process 0)."""

  def __init__(self, path: pathlib.Path, enabled: bool):
    self.path, self.enabled = path, enabled

  def write(self, step: int, kind: str, values: dict) -> None:
    if self.enabled:
      with self.path.open("a") as f:
        f.write(json.dumps({"step": int(step), "kind": kind, "time": time.time(),
                            **{k: float(v) if isinstance(
                                v, (float, np.floating, int, np.integer))
                               else v for k, v in values.items()}}) + "\n")


class PreemptionFlag:
  """SIGTERM -> save at the next step and exit cleanly (single host).

  On several hosts orbax/JAX's preemption sync point is used instead, so
  every host stops at the same step.
  """

  def __init__(self):
    self.requested = False
    self._old = None

  def __enter__(self):
    from vgg_jax import preemption  # pylint: disable=g-import-not-at-top
    # A SIGTERM during start-up (single process; see vgg_jax/preemption.py).
    self.requested = jax.process_count() == 1 and preemption.received()
    if jax.process_count() == 1:
      try:
        self._old = signal.signal(signal.SIGTERM, self._handler)
      except ValueError:  # not the main thread
        self._old = None
    return self

  def _handler(self, signum, frame):
    del signum, frame
    log.warning("SIGTERM received: saving a checkpoint and stopping")
    self.requested = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)

  def reached(self, step: int, manager) -> bool:
    if jax.process_count() > 1:
      return manager.reached_preemption(step)
    return self.requested


# ----------------------------------------------------------------------------
# The loop.


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str | os.PathLike, *,
                       hooks: Sequence[Callable[[int], Any]] = ()
                       ) -> dict[str, Any]:
  """Trains (or resumes) ``config`` in ``workdir``; returns final metrics.

  ``hooks`` are called on the host after every step with the step number
  (e.g. for profiling, or a test that sends SIGTERM mid-run).

  Returns a dict with "step", "val_top1_error", "val_top5_error" (last
  evaluation), "stopped_by" ("total_steps", "plateau", "preemption",
  "stop_after_steps").
  """
  config_checks.validate(config, device_count=jax.device_count())
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  setup_logging(workdir)

  # --- Everything that can be wrong is checked before any compute. ---
  check_workdir_config(config, workdir)
  dtype = compute_dtype(config)
  mesh = sharding_lib.make_mesh(config.mesh_model_axis)
  local_batch = sharding_lib.check_batch_size(config.batch_size, mesh)
  sharding_lib.check_batch_size(config.eval_batch_size, mesh)
  info = input_pipeline.dataset_info(config.data)
  task = tasks_lib.get_task(config)
  evaluators = evaluators_lib.evaluators_from_config(config)
  # The evaluator whose top-1 drives the plateau rule and the best
  # checkpoint: "val" (the default entry), else the first.
  primary = next((e for e in evaluators if e.name == "val"), evaluators[0])
  steps_per_epoch = info.num_train_examples // config.batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"batch_size {config.batch_size} is larger than the "
                     f"training split ({info.num_train_examples} examples)")
  dur = functools.partial(duration_steps, config,
                          steps_per_epoch=steps_per_epoch,
                          batch_size=config.batch_size)
  total_steps = dur("total")
  if not total_steps:
    raise ValueError("set one of total_steps, total_epochs, total_examples")
  eval_every = dur("eval_every", default=steps_per_epoch)
  ckpt_every = dur("checkpoint_every", default=0)
  log_every = dur("log_every", default=100) or 100
  warmup_steps = dur("warmup", default=0)
  if config.lr_schedule == "plateau" and not eval_every:
    raise ValueError("the plateau rule needs evaluations: set eval_every_*")
  check_workdir_config(config, workdir, write=True)
  kwargs = model_kwargs(config, info)
  convention = input_pipeline.input_convention(config.data)
  metadata = {"model": kwargs, "input_convention": convention.to_dict(),
              "class_names": info.class_names}

  log.info("%d process(es), %d device(s) (%s), mesh %s; global batch %d, "
           "per process %d; %d steps/epoch, %d steps in all",
           jax.process_count(), jax.device_count(),
           jax.devices()[0].platform, dict(mesh.shape), config.batch_size,
           local_batch, steps_per_epoch, total_steps)

  # --- Model, optimiser, state. ---
  model = create_model(**kwargs,
                       **models_lib.model_runtime_kwargs(config.model,
                                                         dtype=dtype),
                       rngs=nnx.Rngs(config.seed))
  tx = make_optimizer(config, total_steps=total_steps,
                      steps_per_epoch=steps_per_epoch,
                      warmup_steps=warmup_steps)
  rule = sharding_lib.shard_fc_kernels if config.shard_fc_kernels else None
  controller = optim.PlateauController(
      initial_lr=config.lr, factor=config.lr_factor,
      patience=config.plateau.patience, min_delta=config.plateau.min_delta,
      max_drops=config.plateau.max_drops)
  # This process reads the rows of the global order that its devices hold.
  train_iter = input_pipeline.create_train_iterator(
      config.data, global_batch_size=config.batch_size, seed=config.seed,
      input_convention=convention,
      process_index=sharding_lib.process_row_block(mesh, config.batch_size),
      process_count=jax.process_count())

  ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints,
                                    async_save=config.async_checkpoints)
  latest = ckpt.latest_step()
  if latest is None:
    if config.init_from and config.init_from_a:
      raise ValueError("set init_from or init_from_a, not both")
    if config.init_from:
      src, src_meta = model_dir.load_weights(config.init_from, best=None)
      copied = copy_matching_layers(model, src)
      log.info("initialised from %s (%s): %d tensors copied",
               config.init_from, src_meta.get("source", ""), len(copied))
    elif config.init_from_a:
      src, _ = model_dir.load_weights(config.init_from_a, best=None)
      copied = init_from_a(model, src)
      log.info("initialised from trained net A at %s (the paper's surgery):"
               " copied %s; other layers random", config.init_from_a,
               ", ".join(copied))
    else:
      log.info("training from scratch (init %r, seed %d)", config.model.init,
               config.seed)
  graphdef, state = create_train_state(model, tx)
  shardings = sharding_lib.param_shardings(state, mesh, rule)
  if latest is not None:
    abstract = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        state, shardings)
    del state
    state, ctrl_state, _ = ckpt.restore(latest, abstract_state=abstract,
                                        train_iter=train_iter)
    controller.load_state_dict(ctrl_state)
    log.info("resuming from the workdir's checkpoint at step %d (%s)", latest,
             ckpt.directory / str(latest))
  else:
    state = jax.device_put(state, shardings)
  del model

  if config.lr_schedule == "plateau":
    # The controller is the source of truth for the lr (also after resume).
    state["opt_state"] = optim.set_learning_rate(state["opt_state"],
                                                 controller.learning_rate)
  train_step = make_train_step(graphdef, tx, seed=config.seed, mesh=mesh,
                               state_shardings=shardings, task=task)
  # The sums since the last log line, so a resumed run logs what an
  # uninterrupted one would (a checkpoint without them, or with another
  # task's, starts the sums afresh).
  fresh_metrics = init_metrics(task)
  saved_metrics = None if latest is None else ckpt.restore_train_metrics(
      latest)
  if saved_metrics is not None and set(saved_metrics) != set(fresh_metrics):
    log.info("the checkpoint's training sums %s are not this task's %s: "
             "starting them afresh", sorted(saved_metrics),
             sorted(fresh_metrics))
    saved_metrics = None
  metrics = jax.device_put(saved_metrics or fresh_metrics,
                           sharding_lib.replicated(mesh))

  is_main = jax.process_index() == 0
  # TensorBoard events, TensorFlow not imported (vgg_jax/summary_writer.py).
  writer = summary_writer.SummaryWriter(workdir / "tensorboard",
                                        enabled=is_main)
  jsonl = JsonlWriter(workdir / "metrics.jsonl", is_main)
  if latest is not None:
    checkpointing.drop_metrics_after(jsonl.path, latest)
  if latest is None:
    writer.write_hparams({k: v for k, v in _flatten_config(
        config_to_dict(config)).items()
                          if isinstance(v, (int, float, str, bool))})

  step = int(jax.device_get(state["step"]))
  start_step = step
  result = {"step": step, "val_top1_error": None, "val_top5_error": None,
            "stopped_by": "total_steps"}
  last_good_step = latest

  def evaluate(step):
    t0 = time.time()
    model = nnx.merge(graphdef, state["params"], state["rest"])
    values = {}
    for evaluator in evaluators:
      values.update(evaluator.evaluate(model, convention=convention,
                                       mesh=mesh))
    writer.write_scalars(step, {k: v for k, v in values.items()})
    jsonl.write(step, "eval", values)
    log.info("eval at step %d (epoch %.2f): %s (%.1fs)", step,
             step / steps_per_epoch, evaluators_lib.summary_line(values),
             time.time() - t0)
    return values

  def check_finite(m, step):
    bad = int(m["first_nonfinite_step"])
    if bad >= 0:
      raise NonFiniteLossError(
          f"the training loss became NaN or Inf at step {bad} (checked at "
          f"step {step}); stopping.  The last good checkpoint "
          f"({last_good_step}) is intact in {ckpt.directory}.  Try a lower "
          f"lr, a warm-up, or glorot/he init.")

  def save(step, val=None):
    nonlocal last_good_step
    check_finite(jax.device_get(metrics), step)
    ckpt.save(step, state=state, train_iter=train_iter,
              controller=controller.state_dict(), metadata=metadata,
              train_metrics=jax.device_get(metrics),
              metrics=None if val is None else {
                  checkpointing.BEST_METRIC: val[f"{primary.name}_top1"]})
    last_good_step = step

  t_log, step_log = time.time(), step
  input_seconds = 0.0
  # A hung collective (a dead or stuck peer) ends the run with an error after
  # a bounded time instead of hanging: vgg_jax/watchdog.py.
  dog = watchdog_lib.Watchdog(config.get("collective_timeout_s"), context=(
      f" (process {jax.process_index()} of {jax.process_count()}; last "
      f"checkpoint: {ckpt.directory})"))
  bound_dispatch = sharding_lib.DispatchBound()
  try:
    with dog, PreemptionFlag() as preempt, watchdog_lib.SignalWakeup(dog):
      while step < total_steps:
        # The step is dispatched asynchronously, so reading the next batch
        # overlaps with the device computing this one; the time the host
        # spends here, as a share of wall time, says how close the run is to
        # input-bound (near 1: the device waits for data).
        t_input = time.perf_counter()
        batch = fault_injection.poison_batch(
            next(train_iter), step + 1, config.get("debug_nonfinite_at_step"))
        batch = sharding_lib.shard_batch(
            {k: batch[k] for k in task.batch_keys}, mesh)
        input_seconds += time.perf_counter() - t_input
        state, metrics = train_step(state, metrics, batch)
        bound_dispatch(state["step"])
        step += 1
        dog.beat(f"step {step} (its all-reduce) or the next batch")
        for hook in hooks:
          hook(step)

        if step % log_every == 0 or step == total_steps:
          m = jax.device_get(metrics)
          metrics = jax.device_put(init_metrics(task),
                                   sharding_lib.replicated(mesh))
          check_finite(m, step)
          dt = time.time() - t_log
          img_s = (step - step_log) * config.batch_size / max(dt, 1e-9)
          input_share, input_seconds = input_seconds / max(dt, 1e-9), 0.0
          t_log, step_log = time.time(), step
          lr = float(jax.device_get(optim.learning_rate_of(
              state["opt_state"])))
          values = {**task.summarise(m),
                    "lr": lr, "images_per_sec": img_s,
                    "input_wait_share": input_share,
                    "epoch": step / steps_per_epoch}
          writer.write_scalars(step, values)
          jsonl.write(step, "train", values)
          eta = (total_steps - step) * config.batch_size / max(img_s, 1e-9)
          task_text = "  ".join(
              f"{k.replace('train_', 'train ').replace('top1', 'top-1')} "
              f"{v:.4f}" for k, v in task.summarise(m).items())
          log.info("step %d/%d  epoch %.2f  %s  lr %.2e  %.0f img/s  "
                   "input %.0f%%  ETA %s", step, total_steps, values["epoch"],
                   task_text.replace("train loss", "loss"), lr, img_s,
                   100 * input_share, progress_lib.format_duration(eta))

        val = None
        if eval_every and (step % eval_every == 0 or step == total_steps):
          dog.beat(f"evaluation at step {step}")
          val = evaluate(step)
          result.update(val_top1_error=val[f"{primary.name}_top1_error"],
                        val_top5_error=val[f"{primary.name}_top5_error"])
          if config.lr_schedule == "plateau":
            action = controller.update(step, val[f"{primary.name}_top1"])
            if action == "drop":
              state["opt_state"] = optim.set_learning_rate(
                  state["opt_state"], controller.learning_rate)
              log.info("validation accuracy stopped improving: lr divided "
                       "by %g -> %.2e (drop %d of %d)", 1 / config.lr_factor,
                       controller.learning_rate, controller.drops,
                       controller.max_drops)
            elif action == "stop":
              log.info("validation accuracy stopped improving after %d lr "
                       "drops: training stops (the paper's rule)",
                       controller.drops)
              result["stopped_by"] = "plateau"

        stop_requested = preempt.reached(step, ckpt.manager)
        if stop_requested:
          result["stopped_by"] = "preemption"
        elif (config.stop_after_steps is not None
              and step - start_step >= config.stop_after_steps):
          result["stopped_by"] = "stop_after_steps"
        done = (result["stopped_by"] != "total_steps"
                or step >= total_steps)
        if val is not None or done or (ckpt_every and step % ckpt_every == 0):
          dog.beat(f"the checkpoint at step {step}")
          save(step, val)
        if done:
          break
  finally:
    with dog:  # the last save's cross-process commit can hang too
      dog.beat("the last checkpoint to be written")
      ckpt.wait()
      ckpt.close()
    writer.close()
    train_iter.close()
  result["step"] = step
  jsonl.write(step, "final", {k: v for k, v in result.items()
                              if v is not None and k != "step"})
  log.info("finished at step %d (%s): %s", step, result["stopped_by"],
           ", ".join(f"{k} {v:.4f}" for k, v in result.items()
                     if isinstance(v, float)))
  return result
