"""The initialisation claim (paper §3.1), in miniature: the deepest net, a
short run from each of three starts.

    python -m vgg_jax.main --config experiments/mini/init_claim.py:paper --workdir workdirs/mini/runs/init_E_paper
    python -m vgg_jax.main --config experiments/mini/init_claim.py:paper_from_a --workdir workdirs/mini/runs/init_E_paper_from_a
    python -m vgg_jax.main --config experiments/mini/init_claim.py:glorot --workdir workdirs/mini/runs/init_E_glorot

- ``paper``: every layer N(0, 0.01), biases 0;
- ``paper_from_a``: the same, but A's first four conv layers and three FC
  layers copied from the trained A (``init_from_a``; the paper's way);
- ``glorot``: Glorot & Bengio (2010) uniform, no pre-training.

Paper, §3.1: "bad initialisation can stall learning due to the instability
of gradient in deep nets", hence the deeper nets start from A; "after the
paper submission we found that it is possible to initialise the weights
without pre-training by using the random initialisation procedure of Glorot
& Bengio (2010)".  (``--config.model.name=C`` runs the claim on another net.)
"""

from experiments.mini import base

VARIANTS = {"paper": "paper", "paper_from_a": "paper", "glorot": "glorot"}


def get_config(arg: str | None = None):
  if arg not in VARIANTS:
    raise ValueError(f"init_claim.py:VARIANT with VARIANT one of "
                     f"{list(VARIANTS)}, not {arg!r}")
  c = base.mini_config("E", "s32", from_a=False, locked=False)
  c.model.init = VARIANTS[arg]
  if arg == "paper_from_a":
    c.init_from_a = base.run_dir("A", "s32")
  c.total_steps = 600
  return base.lock(c)
