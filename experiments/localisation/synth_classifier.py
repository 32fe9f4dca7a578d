"""The classifier of the CPU localisation experiment: the synthetic images'
folders (``python -m vgg_jax.localisation.synth --out DATA``) as a
10-class problem, the same width-reduced net A as the localisers
(``experiments/localisation/synth.py``), §3.1's recipe at S in [32, 40].

Changed for the CPU budget, and why (probes in docs/localisation.md): no
dropout and lr 5e-3 (with dropout 0.5 at lr 0.02 or 0.005 the loss went to
ln 10 and stayed: a constant output); batch 64 with a one-epoch warm-up.

    python -m vgg_jax.main --config experiments/localisation/synth_classifier.py \\
        --workdir W --config.data.data_dir=DATA

No paper number (CPU check); its localisers start from it (init_from).
"""

from vgg_jax import configs as common
from experiments.localisation.synth import synth_net


def get_config(arg: str | None = None):
  del arg
  c = common.base_config("folder")
  synth_net(c)
  c.data.eval_split = "validation"
  c.lr = 5e-3
  c.lr_schedule = "cosine"
  c.warmup_epochs = 1.0
  c.batch_size = 64
  c.eval_batch_size = 50
  c.total_epochs = 15.0
  c.eval_every_epochs = 15.0
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  return common.lock(c)
