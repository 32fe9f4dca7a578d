"""Pretrained weights: the on-disk format, and importers of published weights.

The format every part of vgg_jax loads (``save_pretrained`` /
``load_pretrained``)::

    DIR/params/         orbax checkpoint of the model's Params and BatchStats,
                        a pure nested dict {layer: {kernel, bias, ...}}
    DIR/metadata.json   {"format": "vgg_jax.pretrained.v1",
                         "model": {name, num_classes, width_mult, ...},
                         "input_convention": {channel_order, scale, mean, std},
                         "source": "...", "class_names": [...] | null, ...}

``metadata["model"]`` holds the keyword arguments of
``vgg_jax.models.create_model`` that rebuild the net ("model kwargs"), and
``metadata["input_convention"]`` what the weights expect of their input
(SPEC section 9), so evaluation preprocesses correctly without the user
remembering it.

Importers (SPEC section 9; the command is in ``main`` below)::

    python -m vgg_jax.weights --from keras --input vgg16_weights_tf_dim_ordering_tf_kernels.h5 --output DIR
    python -m vgg_jax.weights --from torchvision --input vgg16-397923af.pth --output DIR

The FC1 flattening order is the classic silent bug: Keras flattens an NHWC
map, so its fc1 rows are in (H, W, C) order; torchvision flattens NCHW, so
``classifier.0.weight`` has its inputs in (C, H, W) order.  Both become the
7x7 VALID conv kernel (H, W, C, out) of our head.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import pickle
import shutil
import sys
import tempfile
import zipfile
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from vgg_jax import conventions
from vgg_jax.conventions import InputConvention

FORMAT = "vgg_jax.pretrained.v1"
PARAMS_DIR = "params"
METADATA_FILE = "metadata.json"
# The keyword arguments of create_model that fix the shapes of the weights.
MODEL_KWARGS = ("name", "num_classes", "width_mult", "fc_width", "head_window",
                "in_channels")


class WeightsError(ValueError):
  """A weight file or pretrained directory is not what was expected."""


# --------------------------------------------------------------------------
# The format: save_pretrained / load_pretrained.
# --------------------------------------------------------------------------


def _check_model_kwargs(model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
  if not isinstance(model_kwargs, Mapping) or "name" not in model_kwargs:
    raise WeightsError(
        f"model kwargs must be a dict with at least 'name' (the kwargs of "
        f"create_model: {', '.join(MODEL_KWARGS)}), got {model_kwargs!r}")
  unknown = set(model_kwargs) - set(MODEL_KWARGS)
  if unknown:
    raise WeightsError(
        f"model kwargs have unexpected keys {sorted(unknown)}; expected only "
        f"{list(MODEL_KWARGS)}")
  return dict(model_kwargs)


def _abstract_model(model_kwargs: Mapping[str, Any], dtype: Any = None):
  """The net of ``model_kwargs`` with ShapeDtypeStructs: nothing allocated."""
  from flax import nnx
  from vgg_jax.models import create_model
  kwargs = dict(model_kwargs)
  if dtype is not None:
    kwargs["dtype"] = dtype
  return nnx.eval_shape(lambda: create_model(**kwargs, rngs=nnx.Rngs(0)))


def _weight_state(model):
  """The variables a pretrained directory holds: Params and BatchStats."""
  from flax import nnx
  return nnx.state(model, (nnx.Param, nnx.BatchStat))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    key = f"{prefix}/{k}" if prefix else str(k)
    if isinstance(v, Mapping):
      out.update(_flatten(v, key))
    else:
      out[key] = v
  return out


def _compare_shapes(expected: Mapping[str, Any], found: Mapping[str, Any],
                    what: str) -> None:
  """Raise one error listing every missing, unexpected and mis-shaped tensor.

  ``expected`` and ``found`` are flat {path: array-like with .shape}.
  """
  missing = sorted(set(expected) - set(found))
  extra = sorted(set(found) - set(expected))
  bad = [(k, tuple(expected[k].shape), tuple(found[k].shape))
         for k in sorted(set(expected) & set(found))
         if tuple(expected[k].shape) != tuple(found[k].shape)]
  if not (missing or extra or bad):
    return
  lines = [f"{what} do not match the model:"]
  if missing:
    lines.append(f"  missing tensors: {_short_list(missing)}")
  if extra:
    lines.append(f"  unexpected tensors: {_short_list(extra)}")
  for k, e, f in bad[:20]:
    lines.append(f"  {k}: expected shape {e}, found {f}")
  if len(bad) > 20:
    lines.append(f"  ... and {len(bad) - 20} more mis-shaped tensors")
  raise WeightsError("\n".join(lines))


def _short_list(items: list[str], n: int = 12) -> str:
  s = ", ".join(items[:n])
  return s + (f" ... ({len(items)} in all)" if len(items) > n else "")


def _prepare_output(output_dir: pathlib.Path, overwrite: bool) -> pathlib.Path:
  """Refuse to clobber; make a sibling temp dir that is renamed into place."""
  if output_dir.exists():
    if not output_dir.is_dir():
      raise FileExistsError(f"{output_dir} exists and is not a directory")
    if any(output_dir.iterdir()) and not overwrite:
      raise FileExistsError(
          f"{output_dir} exists and is not empty; pass overwrite=True "
          "(--overwrite) to replace it, or choose another output directory")
  output_dir.parent.mkdir(parents=True, exist_ok=True)
  return pathlib.Path(tempfile.mkdtemp(prefix=output_dir.name + ".tmp-",
                                       dir=output_dir.parent))


def _commit_output(tmp: pathlib.Path, output_dir: pathlib.Path) -> None:
  """Atomically move the finished ``tmp`` onto ``output_dir``."""
  old = None
  if output_dir.exists() and any(output_dir.iterdir()):
    # A non-empty directory cannot be renamed over: move it aside first, so
    # that at every moment output_dir is either the old or the new version.
    old = pathlib.Path(tempfile.mkdtemp(prefix=output_dir.name + ".old-",
                                        dir=output_dir.parent))
    os.rename(output_dir, old / "old")
  os.rename(tmp, output_dir)  # onto a missing or empty directory: atomic
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def save_pretrained(output_dir: str | os.PathLike, model, *,
                    model_kwargs: Mapping[str, Any],
                    input_convention: InputConvention, source: str,
                    class_names: list[str] | None = None,
                    extra: Mapping[str, Any] | None = None,
                    overwrite: bool = False) -> pathlib.Path:
  """Write ``model``'s weights and metadata to ``output_dir``, atomically.

  Args:
    output_dir: the directory to create; must not exist or be empty unless
      ``overwrite``.
    model: an NNX ``VGG`` (its Params and BatchStats are saved).
    model_kwargs: the create_model kwargs that rebuild ``model`` (name,
      num_classes, width_mult, fc_width, head_window, in_channels); checked
      against the model's shapes here, so a wrong one fails now, not at load.
    input_convention: what the weights expect of their input.
    source: where the weights came from (a file, a workdir and step, ...).
    class_names: optional, one per output class.
    extra: optional JSON-serialisable entries added to the metadata.
  Returns:
    The output directory.
  """
  import orbax.checkpoint as ocp
  output_dir = pathlib.Path(output_dir).absolute()
  model_kwargs = _check_model_kwargs(model_kwargs)
  if not isinstance(input_convention, InputConvention):
    raise TypeError(f"input_convention must be an InputConvention, got "
                    f"{type(input_convention).__name__}")
  state = _weight_state(model).to_pure_dict()
  _compare_shapes(
      _flatten(_weight_state(_abstract_model(model_kwargs)).to_pure_dict()),
      _flatten(state), f"the weights of the model given for {model_kwargs}")
  num_classes = model_kwargs.get("num_classes", 1000)
  if class_names is not None and len(class_names) != num_classes:
    raise WeightsError(f"{len(class_names)} class names given for a model "
                       f"with {num_classes} classes")
  metadata = {
      "format": FORMAT,
      "model": model_kwargs,
      "input_convention": input_convention.to_dict(),
      "source": str(source),
      "class_names": None if class_names is None else list(class_names),
  }
  for k, v in (extra or {}).items():
    if k in metadata:
      raise WeightsError(f"extra metadata key {k!r} would overwrite a "
                         "reserved key")
    metadata[k] = v
  text = json.dumps(metadata, indent=2)  # fails before anything is written

  tmp = _prepare_output(output_dir, overwrite)
  try:
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(tmp / PARAMS_DIR, state)
      ckptr.wait_until_finished()
    (tmp / METADATA_FILE).write_text(text + "\n")
    _commit_output(tmp, output_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return output_dir


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
  """The checked metadata.json of a pretrained directory."""
  path = pathlib.Path(path)
  if not path.is_dir():
    raise FileNotFoundError(
        f"pretrained directory {path} does not exist (expected a directory "
        f"with {PARAMS_DIR}/ and {METADATA_FILE}, as written by "
        "`python -m vgg_jax.weights` or save_pretrained)")
  meta_file = path / METADATA_FILE
  if not meta_file.is_file():
    raise WeightsError(
        f"{path} has no {METADATA_FILE}; expected a directory written by "
        f"save_pretrained (found: {sorted(p.name for p in path.iterdir())})")
  try:
    metadata = json.loads(meta_file.read_text())
  except json.JSONDecodeError as e:
    raise WeightsError(f"{meta_file} is not valid JSON: {e}") from e
  if not isinstance(metadata, dict):
    raise WeightsError(f"{meta_file} must hold a JSON object, found "
                       f"{type(metadata).__name__}")
  if metadata.get("format") != FORMAT:
    raise WeightsError(f"{meta_file}: expected format {FORMAT!r}, found "
                       f"{metadata.get('format')!r}")
  if "model" not in metadata:
    raise WeightsError(f"{meta_file} has no 'model' entry (the create_model "
                       "kwargs that rebuild the net)")
  _check_model_kwargs(metadata["model"])
  if "input_convention" not in metadata:
    raise WeightsError(
        f"{meta_file} has no 'input_convention' (channel_order, scale, mean, "
        "std); without it the inputs cannot be preprocessed correctly")
  try:
    InputConvention.from_dict(metadata["input_convention"])
  except (ValueError, TypeError) as e:
    raise WeightsError(f"{meta_file}: bad input_convention: {e}") from e
  return metadata


def input_convention_of(metadata: Mapping[str, Any]) -> InputConvention:
  """The InputConvention stored in a metadata dict."""
  return InputConvention.from_dict(metadata["input_convention"])


def load_pretrained(path: str | os.PathLike, *, dtype: Any = None):
  """Load a directory written by ``save_pretrained``.

  Args:
    path: the directory.
    dtype: compute dtype of the rebuilt model (e.g. jnp.bfloat16); the
      weights keep their stored dtype.
  Returns:
    ``(model, metadata)``; ``input_convention_of(metadata)`` gives the
    InputConvention.
  """
  import orbax.checkpoint as ocp
  from flax import nnx
  path = pathlib.Path(path).absolute()
  metadata = read_metadata(path)
  params_dir = path / PARAMS_DIR
  if not params_dir.is_dir():
    raise WeightsError(f"{path} has no {PARAMS_DIR}/ checkpoint directory")
  try:
    model = _abstract_model(metadata["model"], dtype)
  except (ValueError, TypeError) as e:
    raise WeightsError(f"{path / METADATA_FILE}: cannot build the model "
                       f"{metadata['model']}: {e}") from e
  abstract_state = _weight_state(model)
  target = abstract_state.to_pure_dict()
  with ocp.StandardCheckpointer() as ckptr:
    try:
      stored = ckptr.metadata(params_dir).item_metadata
    except Exception as e:  # orbax raises several types for a broken dir
      raise WeightsError(f"{params_dir} is not a readable orbax checkpoint: "
                         f"{e}") from e
    _compare_shapes(_flatten(target), _flatten(dict(stored)),
                    f"the tensors in {params_dir}")
    restored = ckptr.restore(params_dir, target)
  nnx.replace_by_pure_dict(abstract_state, restored)
  nnx.update(model, abstract_state)
  return model, metadata
