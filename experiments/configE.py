"""Net E (VGG-19).

Commands (ImageNet prepared as TFDS ArrayRecord, ``python -m vgg_jax.data
prepare imagenet2012``; any number of devices/hosts):

    python -m vgg_jax.main --config experiments/configE.py --workdir workdirs/E_s256
    python -m vgg_jax.main --config experiments/configE.py:s384 --workdir workdirs/E_s384
    python -m vgg_jax.main --config experiments/configE.py:jitter --workdir workdirs/E_jitter

The stages run in order (each initialised from the previous workdir's best
checkpoint; ``--config.init_from=DIR`` points elsewhere): S=256 (from a
trained A), S=384 (lr 1e-3), scale jittering S in [256, 512] (fine-tuned from
S=384, tested at Q=384).

Paper, Table 3 (ILSVRC-2012 val, single test scale, dense evaluation),
top-1 / top-5 error %:

    | train S   | Q   | top-1        | top-5 |
    |-----------|-----|--------------|-------|
    | 256       | 256 | 27.3         | 9.0  |
    | 384       | 384 | 26.9         | 8.7  |
    | [256;512] | 384 | 25.5         | 8.0  |

The training-time evaluation here is the centre crop at Q (every one of the
50,000 validation images counted once), a little worse than dense
evaluation; run ``python -m vgg_jax.evaluate`` on the final workdir for the
paper's protocol.

Cost: 19.632 GMACs per 224 image forward, about 118 GFLOP per
training image (forward + backward); the paper's 370K iterations x 256 =
94.7M images = 1.12e+19 FLOP, about 10 accelerator-hours at a
sustained 300 TFLOP/s (bf16: ``--config.model.dtype=bfloat16``; e.g. a TPU
v5p-8 slice or 8 H100s in about 1.3 h of compute, if the input
pipeline keeps up: 2,547 decoded, augmented
images/s per accelerator).  The paper: 2-3
weeks per net on 4 Titan Black GPUs.  The fine-tuning stages cost the same
per image (training crops stay 224x224) and stop by the plateau rule.
"""

from vgg_jax import configs as common


def get_config(arg: str | None = None):
  c = common.vgg_config('E', arg, stages=('s256', 's384', 'jitter'),
                        from_a=True)
  return common.lock(c)
