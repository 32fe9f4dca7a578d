"""The fields every experiment config has, with the paper's §3.1 defaults.

Shared by the config files in ``experiments/`` (``from vgg_jax import
configs``), so the command needs no ``sys.path`` edits to load them.
Experiment files call ``base_config(...)``, change fields, and return
``lock(config)``: a locked ConfigDict rejects a new field, so a typo in a
config file or on the command line (``--config.lerning_rate=...``) is an
error, not a silently ignored setting.

Durations (big_vision's convention): ``total_*``, ``eval_every_*``,
``checkpoint_every_*``, ``log_every_*`` and ``warmup_*`` are given in
``_steps``, ``_epochs`` or ``_examples``; ``vgg_jax.train.duration_steps``
converts, and when several are set the finest unit wins (steps, examples,
epochs), so ``--config.total_steps=100`` overrides a file's
``total_epochs``.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from vgg_jax import input_pipeline

# The paper's stages (§3.1): training scale and how a stage is initialised.
STAGES = {
    # S = 256 from scratch (A) or from a trained A (deeper nets).
    "s256": dict(train_scale=256, eval_scale=256, lr=1e-2),
    # S = 384 initialised from the S = 256 net, initial lr 1e-3.
    "s384": dict(train_scale=384, eval_scale=384, lr=1e-3),
    # Scale jittering S in [256, 512], fine-tuned from the S = 384 net; the
    # single-scale test of Table 3 uses Q = 384.  (The paper does not give
    # this stage's lr; we keep 1e-3, the fine-tuning lr of s384: a choice.)
    "jitter": dict(train_scale=(256, 512), eval_scale=384, lr=1e-3),
}
STAGE_ALIASES = {"256": "s256", "384": "s384", "multi": "jitter",
                 "256-512": "jitter", "jittered": "jitter", "": "s256"}


def _int():
  return config_dict.placeholder(int)


def base_config(data_source: str = "tfds") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(
      name="A",
      width_mult=1.0,
      fc_width=4096,
      head_window=_int(),  # None: 7 for 224 crops (6 for AlexNet)
      init="paper",  # "paper" N(0, 0.01) | "glorot" | "he" | "alexnet"
      dropout_rate=0.5,
      # Compute dtype: "float32" or "bfloat16" (parameters stay float32).
      dtype="float32",
      # "auto" (on CPU each conv shape's fastest schedule, timed once per
      # machine and cached; XLA's conv elsewhere), "autotune", or a pinned
      # schedule "xla" | "im2col" | "im2col_remat" | "rows" | "taps":
      # vgg_jax/models/conv.py.  Same weights and numbers.
      conv_impl="auto",
      # Max-pool output size: "floor" (VALID) or "ceil" (Caffe's; the
      # released VGG weights' own); models/geometry.py.
      pool_rounding="floor",
  ))
  c.data = input_pipeline.default_data_config(data_source)
  c.seed = 0
  c.batch_size = 256  # global, over all devices of all hosts (§3.1)
  c.eval_batch_size = 256

  # Optimiser (§3.1): SGD, momentum 0.9, coupled L2 weight decay 5e-4.
  c.optimizer = ml_collections.ConfigDict(dict(
      momentum=0.9,
      weight_decay=5e-4,
      form="caffe",  # "caffe": v = mu v + lr (g + wd w) | "optax": lr after
      decay_biases=True,  # the paper is silent: a choice (docs/choices.md)
      # Layer-name patterns ("block*", "fc1") whose layers are not trained:
      # zero updates, no optimiser state (e.g. fine-tuning the FC layers).
      frozen_layers=(),
  ))
  c.lr = 1e-2
  # "plateau": the paper's rule (÷10 when validation accuracy stops
  # improving, at most `plateau.max_drops` times, then stop);
  # "piecewise": ÷10 at `lr_boundaries_epochs`; "cosine".
  c.lr_schedule = "plateau"
  c.lr_boundaries_epochs = ()
  c.lr_factor = 0.1
  c.plateau = ml_collections.ConfigDict(dict(
      patience=6,  # evaluations without improvement that make a plateau
      min_delta=5e-3,  # improvement in top-1 accuracy that counts
      max_drops=3,
  ))
  # Durations, each in steps, epochs or examples (train.duration_steps reads
  # them by prefix).  The paper stopped after 370K iterations (74 epochs).
  for prefix in ("warmup", "total", "eval_every", "checkpoint_every",
                 "log_every"):
    c[f"{prefix}_steps"] = _int()
    c[f"{prefix}_epochs"] = config_dict.placeholder(float)
    c[f"{prefix}_examples"] = _int()
  c.total_epochs = 74.0
  c.eval_every_epochs = 1.0
  c.checkpoint_every_steps = 2000
  c.log_every_steps = 100
  c.keep_checkpoints = 3
  # Stop (with a checkpoint) after this many steps of *this* invocation's
  # run, as a preemption would; for tests and time-sliced jobs.
  c.stop_after_steps = _int()
  c.async_checkpoints = True
  # Seconds without training progress after which a process exits with an
  # error (status 75) instead of waiting forever in a hung collective (a dead
  # or stuck peer process); None: 10x the slowest interval seen, at least
  # 300 s (900 s for the first step's compilation).  See vgg_jax/watchdog.py.
  c.collective_timeout_s = config_dict.placeholder(float)
  # Test hook (vgg_jax/fault_injection.py): make step k's batch NaN.
  c.debug_nonfinite_at_step = _int()

  # Initialisation when the workdir has no checkpoint (§3.1):
  # init_from: a pretrained dir (vgg_jax.weights) or another training
  # workdir (its best checkpoint); every layer with the same name and shape
  # is copied, the rest stays random (e.g. S=384 from S=256).
  c.init_from = ""
  # init_from_a: a trained net A (workdir or pretrained dir): the paper's
  # surgery, A's first four conv layers and its three FC layers.
  c.init_from_a = ""
  c.stage = "s256"

  # Mesh: devices per model replica for the FC kernels (1 = pure data
  # parallelism; see vgg_jax/sharding.py).
  c.mesh_model_axis = 1
  c.shard_fc_kernels = False

  # Evaluators run at every evaluation (vgg_jax/eval/evaluators.py):
  # name -> {type, options}; metrics are logged as "{name}_{metric}", and
  # "val"'s top-1 drives the plateau rule and the best checkpoint.
  c.evals = ml_collections.ConfigDict({"val": {"type": "classification"}})
  return c


def apply_stage(c: ml_collections.ConfigDict, stage: str) -> None:
  """Sets scale, lr and initialisation of one of the paper's stages."""
  stage = STAGE_ALIASES.get(stage, stage)
  if stage not in STAGES:
    raise ValueError(f"unknown stage {stage!r}; expected one of "
                     f"{sorted(STAGES)} (or {sorted(STAGE_ALIASES)})")
  s = STAGES[stage]
  c.stage = stage
  with c.data.ignore_type():  # an int S or an [S_min, S_max] pair
    c.data.train_scale = s["train_scale"]
  c.data.eval_scale = s["eval_scale"]
  c.lr = s["lr"]
  name = c.model.name
  if stage == "s384":
    c.init_from = f"workdirs/{name}_s256"
  elif stage == "jitter":
    c.init_from = f"workdirs/{name}_s384"


def lock(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  c.lock()
  return c


def vgg_config(net: str, arg: str | None, *, stages=("s256", "s384", "jitter"),
               from_a: bool = True) -> ml_collections.ConfigDict:
  """The paper's ImageNet recipe (§3.1) for ``net`` at a stage of ``stages``.

  ``arg`` is the text after ``:`` in ``--config file.py:ARG`` (a stage name:
  s256, s384, jitter; or 256, 384, 256-512).  At s256 a net deeper than A
  starts from a trained A (``init_from_a=workdirs/A_s256``) when ``from_a``;
  ``--config.init_from_a= --config.model.init=glorot`` trains it from
  scratch the post-submission way.
  """
  c = base_config("tfds")
  c.model.name = net
  stage = STAGE_ALIASES.get(arg or "", arg or "")
  if stage not in stages:
    raise ValueError(f"net {net}: the paper trains it at stages {stages}, "
                     f"not {arg!r}")
  apply_stage(c, stage)
  if stage == "s256" and from_a and net != "A":
    c.init_from_a = "workdirs/A_s256"
  return c
