"""Appendix A: net D's localisers on ILSVRC-2012 boxes (Tables 8 and 9).

Data: ``python -m vgg_jax.data prepare imagenet2012_loc --manual_dir M
--data_dir data/imagenet2012_loc`` (the image tars + the box tars).
ARG = ``REGRESSION,LAYERS,S``: ``scr|pcr``, ``all|fc`` (FC1-FC2 and the box
layer trained, the convolutions frozen), S = 256 | 384; the localiser starts
from the classification net trained at the same S (``workdirs/D_s{S}``,
``experiments/configD.py``), its box layer fresh, lr 1e-3 (Appendix A.1).

Table 8 (protocol 1, S = 384, localisation error %; paper):

    python -m vgg_jax.main --config experiments/localisation/configD_loc.py:scr,fc,384 --workdir workdirs/Dloc_scr_fc_384   # 36.4
    python -m vgg_jax.main --config experiments/localisation/configD_loc.py:pcr,fc,384 --workdir workdirs/Dloc_pcr_fc_384   # 34.3
    python -m vgg_jax.main --config experiments/localisation/configD_loc.py:pcr,all,384 --workdir workdirs/Dloc_pcr_all_384 # 33.1
    python -m vgg_jax.evaluate --task localisation --protocol centre-gt --model workdirs/Dloc_pcr_all_384 --data-dir data/imagenet2012_loc --scales 384 --output results/table8_pcr_all

Table 9 (protocol 2, PCR, all layers, top-5 localisation error %, val; paper):

    python -m vgg_jax.main --config experiments/localisation/configD_loc.py:pcr,all,256 --workdir workdirs/Dloc_pcr_all_256
    python -m vgg_jax.evaluate --task localisation --protocol dense --model workdirs/Dloc_pcr_all_256 --classifier CLS --data-dir data/imagenet2012_loc --scales 256 --output results/table9_256            # 29.5
    python -m vgg_jax.evaluate --task localisation --protocol dense --model workdirs/Dloc_pcr_all_384 --classifier CLS --data-dir data/imagenet2012_loc --scales 384 --output results/table9_384            # 28.2
    python -m vgg_jax.evaluate --task localisation --protocol dense --model workdirs/Dloc_pcr_all_384 --classifier CLS --data-dir data/imagenet2012_loc --scales 352,384 --output results/table9_384b       # 27.5
    (fusion, 26.9: the union of the 256/256 and 384/352,384 localisers; the
    command takes one scale list for all --model, so run the fusion through
    vgg_jax.localisation.evaluator.evaluate_dense with per-localiser scales
    -- not yet a command option.)

CLS: the best classification system (§4.5), one or several ``--classifier``.
Paper silent on the length and schedule of localisation training: we use the
§3.1 plateau rule on the protocol-1 validation error, at most 2 drops.
"""

import vgg_jax.localisation  # noqa: F401  (registers task, source, evaluator)
from vgg_jax import configs as common


def get_config(arg: str | None = None):
  regression, layers, scale = (arg or "pcr,all,384").split(",")
  scale = int(scale)
  if scale not in (256, 384):
    raise ValueError(f"the paper trains localisers at S=256 and 384, not {scale}")
  c = common.base_config("loc_records")
  c.model.name = "D"
  c.data.data_dir = "data/imagenet2012_loc"
  c.data.train_scale = scale
  c.data.eval_scale = scale
  c.task = "box_regression"
  c.localisation = dict(regression=regression)
  c.data.box_normalisation = "crop_fraction"
  c.init_from = f"workdirs/D_s{scale}"
  c.lr = 1e-3
  c.plateau.max_drops = 2
  if layers == "fc":
    c.optimizer.frozen_layers = ("block*",)
  elif layers != "all":
    raise ValueError(f"layers must be 'all' or 'fc'; got {layers!r}")
  c.total_epochs = 20.0
  c.evals = {"val": {"type": "localisation", "protocol": "centre-gt"}}
  return common.lock(c)
