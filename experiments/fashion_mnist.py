"""The embedded default: a width-reduced VGG on Fashion-MNIST (the README's main job).

    python -m vgg_jax.main --config experiments/fashion_mnist.py --workdir workdirs/fashion_mnist

The paper's recipe scaled down to 28x28 grey images (rescaled to 32x32, so
the five 2x2 pools leave 1x1 and FC1 is a 1x1 conv, ``head_window=1``):
net A at 1/4 width (16-32-64-128-128 channels), FC 256-256-10 with dropout
0.5, SGD momentum 0.9, coupled weight decay 5e-4, batch 128, random crops of
the 4-pixel-padded image and horizontal flips.  Changed for the small
budget, and why: He init (the paper's N(0, 0.01) needs far longer to start),
a short linear warm-up and a step schedule (÷10 twice) instead of the
plateau rule (which needs many evaluations to act).

Expected: see docs/training.md (the measured accuracy and wall time on a
2-core CPU).  Cost: about 0.1 GFLOP per image for forward+backward.
"""

from experiments import common


def get_config(arg: str | None = None):
  del arg
  c = common.base_config("fashion_mnist")
  c.model.name = "A"
  c.model.width_mult = 0.25
  c.model.fc_width = 256
  c.model.head_window = 1
  c.model.init = "he"
  c.batch_size = 128
  c.eval_batch_size = 500
  c.lr = 0.05
  c.lr_schedule = "piecewise"
  c.lr_boundaries_epochs = (6.0, 8.0)
  c.warmup_epochs = 0.5
  c.total_epochs = 9.0
  c.eval_every_epochs = 3.0
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  return common.lock(c)
