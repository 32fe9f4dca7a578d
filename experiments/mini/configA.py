"""A, the miniature: paper Table 3 (and Table 4) at small scale.

    python -m vgg_jax.main --config experiments/mini/configA.py --workdir workdirs/mini/runs/A_s32_seed0

(``python experiments/mini/run.py --workdir workdirs/mini`` runs these with
everything else, data first.)  Net A (8 conv + 3 FC), trained from scratch at S=32; its first four conv
layers and three FC layers then start B-E (paper §3.1).
The recipe and the scale mapping (S=256 -> 32, 384 -> 64, [256;512] ->
[32;64]) are in experiments/mini/base.py.

Paper, Table 3 (ILSVRC-2012 val, dense, single test scale), error %:

    | train S   | Q   | top-1 | top-5 |
    |-----------|-----|-------|-------|
    | 256       | 256 | 29.6  | 10.4  |
"""

from experiments.mini import base


def get_config(arg: str | None = None):
  return base.mini_config('A', arg, stages=('s32',), from_a=False)
