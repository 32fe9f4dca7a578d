"""A-LRN, the miniature: paper Table 3 (and Table 4) at small scale.

    python -m vgg_jax.main --config experiments/mini/configA_LRN.py --workdir workdirs/mini/runs/A-LRN_s32_seed0

(``python experiments/mini/run.py --workdir workdirs/mini`` runs these with
everything else, data first.)  Net A with local response normalisation after its first layer (paper
Table 1), from scratch like A.
The recipe and the scale mapping (S=256 -> 32, 384 -> 64, [256;512] ->
[32;64]) are in experiments/mini/base.py.

Paper, Table 3 (ILSVRC-2012 val, dense, single test scale), error %:

    | train S   | Q   | top-1 | top-5 |
    |-----------|-----|-------|-------|
    | 256       | 256 | 29.7  | 10.5  |
"""

from experiments.mini import base


def get_config(arg: str | None = None):
  return base.mini_config('A-LRN', arg, stages=('s32',), from_a=False)
