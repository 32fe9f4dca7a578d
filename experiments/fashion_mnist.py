"""The embedded default: a width-reduced VGG-A on Fashion-MNIST (the README's main job).

    python -m vgg_jax.main --config experiments/fashion_mnist.py --workdir workdirs/fashion_mnist

Net A of Table 1 at 3/16 width (12-24-48-96-96 channels) with a BatchNorm
after each conv (torchvision's vgg11_bn layout, `A-BN`), on the native 28x28
grey images with Caffe's ceil pooling (28-14-7-4-2-1, so FC1 is a 1x1 conv,
``head_window=1``), FC 512-512-10, SGD with momentum 0.9 (Caffe's form),
coupled weight decay 5e-4, batch 64, random horizontal flips; tested with
the paper's flip augmentation (§3.2: the soft-max of the image and of its
mirror averaged; at Q = 28 with a 1x1 head that is the dense protocol).

Changed from the paper for a 5-minute CPU budget, and why (measured on this
project's 2-core CPU machine, docs/training.md "The 5-minute default"):
- BatchNorm: the plain net A (experiments/fashion_mnist_net_a.py) needs 14
  epochs and 10 minutes for 92.2%; with BN, 5 epochs reach it;
- He init, lr 0.1 with a 0.2-epoch linear warm-up and a cosine decay to 0
  over 5 epochs instead of the plateau rule, which needs many evaluations
  to act (lr 0.2 diverged; 0.05 gave 91.96% / 92.29% with flips);
- dropout 0.25 instead of 0.5 (5 epochs: 92.11% vs 91.54% on the image
  alone): in this few epochs the net underfits;
- 28x28 with ceil pooling instead of rescaling to 32x32: ~1.3x the images
  per second; batch 64 trains faster per image than 128 here;
- no random-translation padding (``data.train_pad=0``): it slows fitting.

Expected (seed 0; every augmentation draw is keyed by the example's global
position): 92.43% test accuracy with flips (92.11% on the image alone,
the ``centre`` line), 3 min 25 s wall clock with start-up and evaluation
(2026-12-02, idle machine, median of 167, 205 and 254 s; the last with
JAX's compilation cache off, as on a fresh machine).  Cost: 5.1M MACs per
image forward; 300K training images.
"""

from vgg_jax import configs as common


def get_config(arg: str | None = None):
  del arg
  c = common.base_config("fashion_mnist")
  c.model.name = "A-BN"
  c.model.width_mult = 0.1875
  c.model.fc_width = 512
  c.model.head_window = 1
  c.model.init = "he"
  c.model.dropout_rate = 0.25
  c.model.pool_rounding = "ceil"
  # The convolution every number above was measured with.  "auto" would
  # time the conv schedules on first use (models/conv_autotune.py) and may
  # pick another, which rounds differently and moves the digits.
  c.model.conv_impl = "im2col"
  c.data.crop_size = 28
  c.data.train_scale = 28
  c.data.eval_scale = 28
  c.data.train_pad = 0
  c.batch_size = 64
  c.eval_batch_size = 500
  c.lr = 0.1
  c.lr_schedule = "cosine"
  c.warmup_epochs = 0.2
  c.total_epochs = 5.0
  c.eval_every_epochs = 5.0  # once, at the end (the cosine needs none)
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  # "val" (the reported accuracy and the best checkpoint) averages each
  # image's and its mirror's posteriors (§3.2); "centre" is the image alone.
  c.evals = dict(val=dict(type="classification", flip=True),
                 centre=dict(type="classification"))
  return common.lock(c)
