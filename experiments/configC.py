"""Net C (VGG-16 with 1x1 convs in stages 3-5).

Commands (ImageNet prepared as TFDS ArrayRecord, ``python -m vgg_jax.data
prepare imagenet2012``; any number of devices/hosts):

    python -m vgg_jax.main --config experiments/configC.py --workdir workdirs/C_s256
    python -m vgg_jax.main --config experiments/configC.py:s384 --workdir workdirs/C_s384
    python -m vgg_jax.main --config experiments/configC.py:jitter --workdir workdirs/C_jitter

The stages run in order (each initialised from the previous workdir's best
checkpoint; ``--config.init_from=DIR`` points elsewhere): S=256 (from a
trained A), S=384 (lr 1e-3), scale jittering S in [256, 512] (fine-tuned from
S=384, tested at Q=384).

Paper, Table 3 (ILSVRC-2012 val, single test scale, dense evaluation),
top-1 / top-5 error %:

    | train S   | Q   | top-1        | top-5 |
    |-----------|-----|--------------|-------|
    | 256       | 256 | 28.1         | 9.4  |
    | 384       | 384 | 28.1         | 9.3  |
    | [256;512] | 384 | 27.3         | 8.8  |

The training-time evaluation here is the centre crop at Q (every one of the
50,000 validation images counted once), a little worse than dense
evaluation; run ``python -m vgg_jax.evaluate`` on the final workdir for the
paper's protocol.

Cost: 11.771 GMACs per 224 image forward, about 71 GFLOP per
training image (forward + backward); the paper's 370K iterations x 256 =
94.7M images = 6.69e+18 FLOP, about 6 accelerator-hours at a
sustained 300 TFLOP/s (bf16: ``--config.model.dtype=bfloat16``; e.g. a TPU
v5p-8 slice or 8 H100s in about 0.8 h of compute, if the input
pipeline keeps up: 4,248 decoded, augmented
images/s per accelerator).  The paper: 2-3
weeks per net on 4 Titan Black GPUs.  The fine-tuning stages cost the same
per image (training crops stay 224x224) and stop by the plateau rule.
"""

from vgg_jax import configs as common


def get_config(arg: str | None = None):
  c = common.vgg_config('C', arg, stages=('s256', 's384', 'jitter'),
                        from_a=True)
  return common.lock(c)
