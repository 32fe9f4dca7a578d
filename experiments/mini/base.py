"""The miniature's recipe, shared by every config file in experiments/mini/.

The paper's §3.1 protocol at small scale, on Fashion-MNIST written out as
PNG files (``python experiments/mini/run.py`` prepares them), read by the
same image pipeline as ImageNet (``data.source="folder"``): isotropic
rescaling to the training scale S, random 32x32 crops, horizontal flips,
scale jittering.  The paper's sizes divided by 7 where possible:

    | paper                   | miniature                          |
    |-------------------------|------------------------------------|
    | 224x224 crops           | 32x32 crops (five 2x2 pools -> 1x1) |
    | S = 256 (fixed)         | S = 32  (stage ``s32``)            |
    | S = 384 (fixed)         | S = 64  (stage ``s64``)            |
    | S in [256, 512]         | S in [32, 64]  (stage ``jitter``)  |
    | test Q, steps of 32 px  | test Q in {32, 64, 96}             |

Test scales are multiples of 32, the nets' total stride, as all the paper's
are (224, 256, 288, 352, 384, 416, 512): at any other Q the last pooling
floors away part of the image in dense evaluation.

Kept from the paper: SGD with momentum 0.9 (Caffe's form), weight decay
5e-4, dropout 0.5 on FC1/FC2, deeper nets initialised from the trained A
(its first four conv layers and three FC layers; the rest random), lr 1e-2 at S=32 and 1e-3 for the
fine-tuning stages, the plateau rule (÷10 when validation accuracy stops
improving; the config's ``plateau`` fields), mean subtraction only.
Changed for size: conv widths x3/16 (12-24-48-96-96), FC 256-256-10,
Glorot instead of N(0, 0.01) for the random layers (see below),
batch 128, stage lengths in steps (``run.py`` caps each), no colour
augmentation (the images are grey: ``pca_std=0``), the plateau rule
evaluated on a held-out validation split carved from the training set (from
its last 5,000 images; 2,000 in run.py's full mode), so the test split stays
unseen until the tables.
"""

from __future__ import annotations

from vgg_jax import configs as common

# Where run.py puts things by default (override with --config.data.data_dir,
# --config.init_from, --config.init_from_a).
DEFAULT_ROOT = "workdirs/mini"
DATA_SUBDIR = "data/fashion_mnist_png"
# The training-set mean (0-255) of Fashion-MNIST's 60,000 training images,
# the same in all three channels (grey replicated to RGB).
FASHION_MNIST_MEAN = 72.940

# The paper's stages (§3.1), scaled: (train S, Q of the training-time
# validation, initial lr, the stage it starts from).
STAGES = {
    "s32": dict(train_scale=32, eval_scale=32, lr=1e-2, previous=None),
    "s64": dict(train_scale=64, eval_scale=64, lr=1e-3, previous="s32"),
    "jitter": dict(train_scale=(32, 64), eval_scale=64, lr=1e-3,
                   previous="s64"),
}


def run_dir(net: str, stage: str, seed: int = 0, root: str = DEFAULT_ROOT
            ) -> str:
  """The training workdir run.py uses for ``net`` at ``stage``."""
  return f"{root}/runs/{net}_{stage}_seed{seed}"


lock = common.lock


def mini_config(net: str, arg: str | None, *, stages=("s32", "s64", "jitter"),
                from_a: bool = True, locked: bool = True):
  """The miniature recipe for ``net`` at the stage named by ``arg``.

  Returned locked (a misspelt field is an error) unless ``locked=False``.
  """
  stage = arg or "s32"
  if stage not in STAGES:
    raise ValueError(f"unknown stage {stage!r}; the miniature's stages are "
                     f"{list(STAGES)}")
  if stage not in stages:
    raise ValueError(f"net {net}: the paper trains it at stages {stages}, "
                     f"not {stage!r}")
  s = STAGES[stage]
  c = common.base_config("folder")
  c.model.name = net
  c.model.width_mult = 0.1875
  c.model.fc_width = 256
  c.model.head_window = 1
  # Glorot, not the paper's N(0, 0.01): at reduced width each layer's
  # fan-in is 4-5x smaller, so N(0, 0.01) shrinks the signal ~2x more per
  # layer than at full width; A (x1/4 width) from N(0, 0.01) did not learn
  # at all here (loss 2.3026 = ln 10 after 200 steps; docs/mini_tables.md).
  # Glorot is the paper's own post-submission fix (§3.1); init_claim.py
  # runs N(0, 0.01).
  c.model.init = "glorot"
  d = c.data
  d.data_dir = f"{DEFAULT_ROOT}/{DATA_SUBDIR}"
  d.class_index_path = None  # (the typed placeholder keeps its type)
  d.train_split, d.eval_split = "train", "val"
  d.crop_size = 32
  d.train_scale = s["train_scale"]
  d.eval_scale = s["eval_scale"]
  d.pca_std = 0.0
  d.mean_rgb = (FASHION_MNIST_MEAN,) * 3
  d.std_rgb = (1.0, 1.0, 1.0)
  d.image_channels = 3
  d.num_threads = 2
  c.stage = stage
  c.batch_size = 128
  c.eval_batch_size = 500
  c.lr = s["lr"]
  c.lr_schedule = "plateau"
  c.total_steps = 1000
  c.eval_every_steps = 100
  c.log_every_steps = 50
  c.checkpoint_every_steps = 100
  c.keep_checkpoints = 2
  if s["previous"]:
    c.init_from = run_dir(net, s["previous"])
  elif from_a and net != "A":
    c.init_from_a = run_dir("A", "s32")
  return common.lock(c) if locked else c
