"""Which directory is this model?  The one loader of model directories.

A model directory is either imported weights (``metadata.json``, written by
``python -m vgg_jax.weights``) or a training workdir (``checkpoints/``,
written by ``python -m vgg_jax.main``).  ``load_model`` is used by
evaluation, prediction and the training loop's ``init_from`` (paper §3.1's
initialisation from a shallower net), so the rules live once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

from vgg_jax.models import geometry


@dataclasses.dataclass
class LoadedModel:
  """A net, its input convention and what evaluation needs to know of it."""
  path: str
  model: Any
  metadata: dict
  convention: Any
  crop_size: int
  train_scale: Any  # S (int), [S_min, S_max], or None if unknown

  @property
  def label(self) -> str:
    m = self.metadata["model"]
    return str(m.get("name"))


def _training_config(path: pathlib.Path) -> dict:
  cfg = path / "config.json"
  if cfg.is_file():
    try:
      return json.loads(cfg.read_text())
    except json.JSONDecodeError:
      return {}
  return {}


def load_weights(path: str | os.PathLike, *, step: int | None = None,
                 best: bool | None = False, dtype: Any = None
                 ) -> tuple[Any, dict]:
  """(model, metadata) of a model directory, nothing checked beyond its kind.

  ``step``/``best`` pick a workdir's checkpoint (default: the latest);
  ``best=None`` takes the best checkpoint when one is recorded, else the
  latest (the training loop's ``init_from``).
  """
  from vgg_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from vgg_jax import weights  # pylint: disable=g-import-not-at-top
  p = pathlib.Path(path)
  if (p / weights.METADATA_FILE).is_file():
    return weights.load_pretrained(p, dtype=dtype)
  if (p / checkpointing.CHECKPOINT_DIR).is_dir():
    if best is None:
      ckpt = checkpointing.Checkpointer(p, read_only=True)
      best = ckpt.best_step() is not None
      ckpt.close()
    return checkpointing.load_model_from_workdir(p, step=step, best=best,
                                                 dtype=dtype)
  raise FileNotFoundError(
      f"{path} is neither imported weights (a directory with "
      f"{weights.METADATA_FILE}, written by `python -m vgg_jax.weights`) nor "
      f"a training workdir (with {checkpointing.CHECKPOINT_DIR}/, written by "
      "`python -m vgg_jax.main`); did the previous stage run?")


def load_model(path: str | os.PathLike, *, expect_name: str | None = None,
               crop_size: int | None = None, step: int | None = None,
               best: bool = False, dtype: Any = None) -> LoadedModel:
  """A model dir: imported weights (``vgg_jax.weights``) or a training workdir.

  Checks, before anything is computed: the net is the one asked for
  (``expect_name``), the directory carries an input convention, and the
  training crop fits the net's head (FC1 must see exactly head_window^2).
  ``step``/``best`` pick a workdir's checkpoint (default: the latest);
  ``dtype`` is the compute dtype (e.g. jnp.bfloat16; weights stay f32).
  """
  from vgg_jax import conventions as conventions_lib  # pylint: disable=g-import-not-at-top
  from vgg_jax.models import canonical_name, net_spec  # pylint: disable=g-import-not-at-top
  p = pathlib.Path(path)
  model, meta = load_weights(p, step=step, best=best, dtype=dtype)
  if not meta.get("input_convention"):
    raise ValueError(
        f"{path} carries no input convention (channel order, scale, mean, "
        "std); without it its inputs cannot be preprocessed.  Re-export the "
        "weights with vgg_jax.weights.save_pretrained(input_convention=...)")
  convention = conventions_lib.InputConvention.from_dict(
      meta["input_convention"])
  if convention.mean_image:  # AlexNet's per-pixel mean: there, and right
    from vgg_jax import mean_image  # pylint: disable=g-import-not-at-top
    mean_image.load(convention.mean_image)
  name = meta["model"]["name"]
  if expect_name is not None and canonical_name(expect_name) != canonical_name(
      name):
    raise ValueError(
        f"{path} holds net {canonical_name(name)!r}, but "
        f"{canonical_name(expect_name)!r} was asked for (--arch); pass the "
        "right directory or --arch")
  cfg = _training_config(p)
  data = cfg.get("data", {}) if isinstance(cfg, dict) else {}
  train_scale = meta.get("train_scale", data.get("train_scale"))
  crop = crop_size or meta.get("crop_size") or data.get("crop_size")
  spec = net_spec(name, **{k: meta["model"][k] for k in
                           ("width_mult", "fc_width", "head_window",
                            "pool_rounding")
                           if meta["model"].get(k) is not None})
  if crop is None:  # the smallest input whose score map is 1x1
    crop = geometry.min_input_size(spec)
  crop = int(crop)
  if geometry.map_size(spec, crop) != 1:
    raise ValueError(
        f"{path}: net {name} with head window {spec.head_window} gives a "
        f"{geometry.map_size(spec, crop)}-wide score map on "
        f"a {crop}x{crop} crop, not 1x1: the crop size does not match the "
        "net (pass --crop-size)")
  if isinstance(train_scale, list):
    train_scale = [int(v) for v in train_scale]
  return LoadedModel(str(path), model, meta, convention, crop, train_scale)


def check_compatible(loaded: LoadedModel, info, *, data_desc: str) -> None:
  """Classes and channels of the model against the dataset's."""
  m = loaded.metadata["model"]
  classes = int(m.get("num_classes", 1000))
  if classes != info.num_classes:
    raise ValueError(
        f"{loaded.path} predicts {classes} classes but {data_desc} has "
        f"{info.num_classes}: the model was not trained on this dataset")
  names = loaded.metadata.get("class_names")
  if names and info.class_names and list(names) != list(info.class_names):
    diff = [(i, a, b) for i, (a, b) in enumerate(zip(names,
                                                     info.class_names))
            if a != b][:3]
    raise ValueError(
        f"{loaded.path}'s class names differ from {data_desc}'s (first "
        f"differences (index, model, data): {diff}); labels would be "
        "compared against the wrong classes")
  channels = int(m.get("in_channels", 3))
  if channels != info.image_channels:
    raise ValueError(
        f"{loaded.path} takes {channels}-channel images but {data_desc} "
        f"gives {info.image_channels} (data.image_channels)")


