"""C, the miniature: paper Table 3 (and Table 4) at small scale.

    python -m vgg_jax.main --config experiments/mini/configC.py:s32 --workdir workdirs/mini/runs/C_s32_seed0
    python -m vgg_jax.main --config experiments/mini/configC.py:s64 --workdir workdirs/mini/runs/C_s64_seed0
    python -m vgg_jax.main --config experiments/mini/configC.py:jitter --workdir workdirs/mini/runs/C_jitter_seed0

(``python experiments/mini/run.py --workdir workdirs/mini`` runs these with
everything else, data first.)  Net C (13 conv, three of them 1x1), started from the trained A at S=32;
then S=64 from S=32, then jittered S in [32, 64] from S=64 (paper §3.1).
The recipe and the scale mapping (S=256 -> 32, 384 -> 64, [256;512] ->
[32;64]) are in experiments/mini/base.py.

Paper, Table 3 (ILSVRC-2012 val, dense, single test scale), error %:

    | train S   | Q   | top-1 | top-5 |
    |-----------|-----|-------|-------|
    | 256       | 256 | 28.1  | 9.4   |
    | 384       | 384 | 28.1  | 9.3   |
    | [256;512] | 384 | 27.3  | 8.8   |
"""

from experiments.mini import base


def get_config(arg: str | None = None):
  return base.mini_config('C', arg, stages=('s32', 's64', 'jitter'), from_a=True)
