"""D, the miniature: paper Table 3 (and Table 4) at small scale.

    python -m vgg_jax.main --config experiments/mini/configD.py:s32 --workdir workdirs/mini/runs/D_s32_seed0
    python -m vgg_jax.main --config experiments/mini/configD.py:s64 --workdir workdirs/mini/runs/D_s64_seed0
    python -m vgg_jax.main --config experiments/mini/configD.py:jitter --workdir workdirs/mini/runs/D_jitter_seed0

(``python experiments/mini/run.py --workdir workdirs/mini`` runs these with
everything else, data first.)  Net D (VGG-16), started from the trained A at S=32; then S=64 from
S=32, then jittered S in [32, 64] from S=64 (paper §3.1).
The recipe and the scale mapping (S=256 -> 32, 384 -> 64, [256;512] ->
[32;64]) are in experiments/mini/base.py.

Paper, Table 3 (ILSVRC-2012 val, dense, single test scale), error %:

    | train S   | Q   | top-1 | top-5 |
    |-----------|-----|-------|-------|
    | 256       | 256 | 27.0  | 8.8   |
    | 384       | 384 | 26.8  | 8.7   |
    | [256;512] | 384 | 25.6  | 8.1   |
"""

from experiments.mini import base


def get_config(arg: str | None = None):
  return base.mini_config('D', arg, stages=('s32', 's64', 'jitter'), from_a=True)
