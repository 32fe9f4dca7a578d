"""The classifier of the CPU localisation experiment: the synthetic images'
folders (``python -m vgg_jax.localisation.synth --out DATA``) as a
10-class problem, the same width-reduced net A as the localisers
(``experiments/localisation/synth.py``), §3.1's recipe at S in [32, 48].

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
  c.lr = 0.02
  c.lr_schedule = "cosine"
  c.warmup_epochs = 0.5
  c.batch_size = 32
  c.eval_batch_size = 50
  c.total_epochs = 15.0
  c.eval_every_epochs = 15.0
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  return common.lock(c)
