"""Net B (VGG-13), initialised from a trained A (first four conv layers and
the three FC layers), the other layers random.

Commands (ImageNet prepared as TFDS ArrayRecord, ``python -m vgg_jax.data
prepare imagenet2012``; any number of devices/hosts):

    python -m vgg_jax.main --config experiments/configB.py --workdir workdirs/B_s256

Run configA.py first (this net starts from workdirs/A_s256).

Paper, Table 3 (ILSVRC-2012 val, single test scale, dense evaluation),
top-1 / top-5 error %:

    | train S   | Q   | top-1        | top-5 |
    |-----------|-----|--------------|-------|
    | 256       | 256 | 28.7         | 9.9  |

The training-time evaluation here is the centre crop at Q (every one of the
50,000 validation images counted once), a little worse than dense
evaluation; run ``python -m vgg_jax.evaluate`` on the final workdir for the
paper's protocol.

Cost: 11.308 GMACs per 224 image forward, about 68 GFLOP per
training image (forward + backward); the paper's 370K iterations x 256 =
94.7M images = 6.43e+18 FLOP, about 6 accelerator-hours at a
sustained 300 TFLOP/s (bf16: ``--config.model.dtype=bfloat16``; e.g. a TPU
v5p-8 slice or 8 H100s in about 0.7 h of compute, if the input
pipeline keeps up: 4,422 decoded, augmented
images/s per accelerator).  The paper: 2-3
weeks per net on 4 Titan Black GPUs.  The fine-tuning stages cost the same
per image (training crops stay 224x224) and stop by the plateau rule.
"""

from vgg_jax import configs as common


def get_config(arg: str | None = None):
  c = common.vgg_config('B', arg, stages=('s256',),
                        from_a=True)
  return common.lock(c)
