"""Net A (VGG-11), trained from random init N(0, 0.01), the paper's first net;
its weights seed the deeper nets (``init_from_a``).

Commands (ImageNet prepared as TFDS ArrayRecord, ``python -m vgg_jax.data
prepare imagenet2012``; any number of devices/hosts):

    python -m vgg_jax.main --config experiments/configA.py --workdir workdirs/A_s256

Paper, Table 3 (ILSVRC-2012 val, single test scale, dense evaluation),
top-1 / top-5 error %:

    | train S   | Q   | top-1        | top-5 |
    |-----------|-----|--------------|-------|
    | 256       | 256 | 29.6         | 10.4 |

The training-time evaluation here is the centre crop at Q (every one of the
50,000 validation images counted once), a little worse than dense
evaluation; run ``python -m vgg_jax.evaluate`` on the final workdir for the
paper's protocol.

Cost: 7.609 GMACs per 224 image forward, about 46 GFLOP per
training image (forward + backward); the paper's 370K iterations x 256 =
94.7M images = 4.32e+18 FLOP, about 4 accelerator-hours at a
sustained 300 TFLOP/s (bf16: ``--config.model.dtype=bfloat16``; e.g. a TPU
v5p-8 slice or 8 H100s in about 0.5 h of compute, if the input
pipeline keeps up: 6,571 decoded, augmented
images/s per accelerator).  The paper: 2-3
weeks per net on 4 Titan Black GPUs.  The fine-tuning stages cost the same
per image (training crops stay 224x224) and stop by the plateau rule.
"""

from vgg_jax import configs as common


def get_config(arg: str | None = None):
  c = common.vgg_config('A', arg, stages=('s256',),
                        from_a=False)
  return common.lock(c)
