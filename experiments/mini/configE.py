"""E, the miniature: paper Table 3 (and Table 4) at small scale.

    python -m vgg_jax.main --config experiments/mini/configE.py:s32 --workdir workdirs/mini/runs/E_s32_seed0
    python -m vgg_jax.main --config experiments/mini/configE.py:s64 --workdir workdirs/mini/runs/E_s64_seed0
    python -m vgg_jax.main --config experiments/mini/configE.py:jitter --workdir workdirs/mini/runs/E_jitter_seed0

(``python experiments/mini/run.py --workdir workdirs/mini`` runs these with
everything else, data first.)  Net E (VGG-19), started from the trained A at S=32; then S=64 from
S=32, then jittered S in [32, 64] from S=64 (paper §3.1).
The recipe and the scale mapping (S=256 -> 32, 384 -> 64, [256;512] ->
[32;64]) are in experiments/mini/base.py.

Paper, Table 3 (ILSVRC-2012 val, dense, single test scale), error %:

    | train S   | Q   | top-1 | top-5 |
    |-----------|-----|-------|-------|
    | 256       | 256 | 27.3  | 9.0   |
    | 384       | 384 | 26.9  | 8.7   |
    | [256;512] | 384 | 25.5  | 8.0   |
"""

from experiments.mini import base


def get_config(arg: str | None = None):
  return base.mini_config('E', arg, stages=('s32', 's64', 'jitter'), from_a=True)
