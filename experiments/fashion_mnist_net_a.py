"""Net A exactly as Table 1 (no BatchNorm), width-reduced, on Fashion-MNIST.

    python -m vgg_jax.main --config experiments/fashion_mnist_net_a.py --workdir workdirs/fashion_mnist_net_a

The README's main job until 2026-12-02 (experiments/fashion_mnist.py is now
net A-BN, twice as fast to 92%); kept because it is the paper's own net and
the transfer evidence (experiments/transfer/run_evidence.py) is trained
with it.

The paper's recipe (§3.1) scaled down to 28x28 grey images, rescaled to
32x32 so that the five 2x2 pools leave 1x1 and FC1 is a 1x1 conv
(``head_window=1``): net A at 3/16 width (12-24-48-96-96 channels), FC
512-512-10 with dropout 0.5, SGD momentum 0.9 (Caffe's form), coupled weight
decay 5e-4, batch 128, random horizontal flips.

Changed for a 10-minute CPU budget, and why:
- He init (the paper's N(0, 0.01) needs many epochs to get going);
- lr 0.05 with a 0.2-epoch linear warm-up and a cosine decay to 0 over 14
  epochs instead of the plateau rule, which needs many evaluations to act
  (a cosine beat ÷10 steps at epochs 8 and 10: 91.93% vs 91.41% after 11
  epochs);
- no random-translation padding (``data.train_pad=0``): in this few epochs
  the net barely overfits (train accuracy with dropout 96%, test 92%), so
  augmentation that slows fitting costs accuracy;
- FC width 512 (the head costs little at 1x1; narrower heads with dropout
  0.5 learned much more slowly: 128 wide, 82.6% after 5 epochs).

Expected (docs/training.md, measured on this project's 2-core CPU machine):
92.22% test accuracy after 14 epochs (seed 0; every augmentation draw is
keyed by the example's global position), 10 min 13 s wall clock with
start-up and one evaluation at the end (2026-12-02, twice, the machine
otherwise idle; 8 min 29 s on 2026-11-22).  A repeated run loads its
compiled programs from JAX's persistent cache
(vgg_jax/compilation_cache.py), ~15 s
sooner.  Cost: 6.2M MACs per image forward, about 37 MFLOP per training
image; 840K training images.
"""

from vgg_jax import configs as common


def get_config(arg: str | None = None):
  del arg
  c = common.base_config("fashion_mnist")
  c.model.name = "A"
  c.model.width_mult = 0.1875
  c.model.fc_width = 512
  c.model.head_window = 1
  c.model.init = "he"
  # The convolution every number above was measured with.  "auto" would
  # time the conv schedules on first use (models/conv_autotune.py) and may
  # pick another, which rounds differently and moves the digits.
  c.model.conv_impl = "im2col"
  c.data.train_pad = 0
  c.batch_size = 128
  c.eval_batch_size = 500
  c.lr = 0.05
  c.lr_schedule = "cosine"
  c.warmup_epochs = 0.2
  c.total_epochs = 14.0
  c.eval_every_epochs = 14.0  # once, at the end (the cosine needs none)
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  return common.lock(c)
