"""The CPU localisation experiment (paper Appendix A on the synthetic set).

    python -m vgg_jax.localisation.synth --out DATA
    python -m vgg_jax.main --config experiments/localisation/synth.py:scr,all \\
        --workdir W --config.data.data_dir=DATA --config.init_from=CLASSIFIER

Arg ``"REGRESSION,LAYERS[,NORMALISATION]"``: ``scr`` | ``pcr``; ``all`` |
``fc`` (FC1-FC2 and the new box layer trained, the convolutions frozen);
``crop_fraction`` (default) | ``centred_log``.  A width-reduced net A on 64x64
images, crops 32 (S jittered in [32, 40]); the classifier it starts
from is ``experiments/localisation/synth_classifier.py`` on the same images
(the folder layout of the synthetic set).  No paper number: this is the CPU
check of the Appendix A pipeline (docs/localisation.md has the results and
``experiments/localisation/run_synth.py`` runs everything).
"""

import vgg_jax.localisation  # noqa: F401  (registers task, source, evaluator)
from vgg_jax import configs as common

SYNTH_NET = dict(name="A", width_mult=0.25, fc_width=256, head_window=1,
                 init="he")


def synth_net(c):
  for k, v in SYNTH_NET.items():
    c.model[k] = v
  c.data.crop_size = 32
  # S in [32, 40]: the crop keeps at least 80% of each side, so the item
  # (24-56 px of 64, run_synth.py) is rarely cut out of it.
  c.data.train_scale = (32, 40)
  c.data.eval_scale = 36
  # No dropout: with dropout 0.5 on the 256-wide FC layers the training loss
  # started at ~8 and the nets collapsed to constant outputs (loss ln 10) on
  # the synthetic images (docs/localisation.md, "The CPU experiment").
  c.model.dropout_rate = 0.0
  c.data.pca_std = 0.0
  # Unit-variance inputs (torchvision's ImageNet std): the small He-init net
  # trains from scratch at the classifier's lr without diverging.
  c.data.std_rgb = (58.395, 57.12, 57.375)


def get_config(arg: str | None = None):
  parts = (arg or "scr,all").split(",")
  if len(parts) not in (2, 3):
    raise ValueError("arg is REGRESSION,LAYERS[,NORMALISATION], e.g. "
                     f"'scr,all' or 'pcr,fc,centred_log'; got {arg!r}")
  regression, layers = parts[:2]
  normalisation = parts[2] if len(parts) == 3 else "crop_fraction"
  c = common.base_config("loc_records")
  synth_net(c)
  c.task = "box_regression"
  c.localisation = dict(regression=regression)
  c.data.box_normalisation = normalisation
  c.lr = 1e-3  # Appendix A.1
  c.lr_schedule = "cosine"
  c.optimizer.weight_decay = 5e-4
  if layers == "fc":
    c.optimizer.frozen_layers = ("block*",)
  elif layers != "all":
    raise ValueError(f"layers must be 'all' or 'fc'; got {layers!r}")
  c.batch_size = 64
  c.eval_batch_size = 50
  c.total_epochs = 10.0
  c.eval_every_epochs = 10.0
  c.log_every_steps = 20
  c.checkpoint_every_steps = 1000
  c.evals = {"val": {"type": "localisation", "protocol": "centre-gt"}}
  return common.lock(c)
