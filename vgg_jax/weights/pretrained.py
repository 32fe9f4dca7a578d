"""The pretrained format every part of vgg_jax loads, written atomically.

``save_pretrained`` / ``load_pretrained``::

    DIR/params/         orbax checkpoint of the model's Params and BatchStats,
                        a pure nested dict {layer: {kernel, bias, ...}}
    DIR/metadata.json   {"format": "vgg_jax.pretrained.v1",
                         "model": {name, num_classes, width_mult, ...},
                         "input_convention": {channel_order, scale, mean, std},
                         "source": "...", "class_names": [...] | null, ...}

``metadata["model"]`` holds the keyword arguments of
``vgg_jax.models.create_model`` that rebuild the net ("model kwargs"), and
``metadata["input_convention"]`` what the weights expect of their input, so
evaluation preprocesses correctly without the user remembering it.

A directory is written into a temporary sibling and renamed into place, so a
half-written one is never taken for a finished one.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Mapping

import jax
import numpy as np

from vgg_jax.conventions import InputConvention
from vgg_jax.weights.errors import WeightsError
from vgg_jax.weights.tensors import (abstract_model, check_model_kwargs,
                                     compare_shapes, expected_tensors, flatten,
                                     pure_dict, weight_state)

FORMAT = "vgg_jax.pretrained.v1"
PARAMS_DIR = "params"
METADATA_FILE = "metadata.json"

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


def _checkpointer():
  """An orbax checkpointer that involves this process only.

  A pretrained directory is written and read by whichever process calls
  save/load_pretrained (the import command, one host exporting, every host
  loading its own copy), so no cross-host barriers.
  """
  import orbax.checkpoint as ocp
  me = jax.process_index()
  return ocp.StandardCheckpointer(
      multiprocessing_options=ocp.options.MultiprocessingOptions(
          primary_host=me, active_processes={me}))


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
  output_dir = pathlib.Path(output_dir).absolute()
  model_kwargs = check_model_kwargs(model_kwargs)
  if not isinstance(input_convention, InputConvention):
    raise TypeError(f"input_convention must be an InputConvention, got "
                    f"{type(input_convention).__name__}")
  state = pure_dict(weight_state(model))
  compare_shapes(
      expected_tensors(model_kwargs),
      flatten(state), f"the weights of the model given for {model_kwargs}")
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

  # Host copies: the save is then a plain file operation of this process,
  # also for params replicated over a multi-host mesh.
  state = jax.tree.map(np.asarray, state)
  tmp = _prepare_output(output_dir, overwrite)
  try:
    with _checkpointer() as ckptr:
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
  check_model_kwargs(metadata["model"])
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
      weights are restored in the nets' parameter dtype, float32.
  Returns:
    ``(model, metadata)``; ``input_convention_of(metadata)`` gives the
    InputConvention.
  """
  from flax import nnx
  path = pathlib.Path(path).absolute()
  metadata = read_metadata(path)
  params_dir = path / PARAMS_DIR
  if not params_dir.is_dir():
    raise WeightsError(f"{path} has no {PARAMS_DIR}/ checkpoint directory")
  try:
    model = abstract_model(metadata["model"], dtype)
  except (ValueError, TypeError) as e:
    raise WeightsError(f"{path / METADATA_FILE}: cannot build the model "
                       f"{metadata['model']}: {e}") from e
  abstract_state = weight_state(model)
  # Restored onto this process's first device; callers shard or replicate.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
      pure_dict(abstract_state))
  with _checkpointer() as ckptr:
    try:
      stored = ckptr.metadata(params_dir).item_metadata
    except Exception as e:  # orbax raises several types for a broken dir
      raise WeightsError(f"{params_dir} is not a readable orbax checkpoint: "
                         f"{e}") from e
    compare_shapes(flatten(target), flatten(dict(stored)),
                    f"the tensors in {params_dir}")
    try:
      restored = ckptr.restore(params_dir, target)
    except Exception as e:  # e.g. a chunk file missing or cut short
      raise WeightsError(f"cannot read the arrays in {params_dir} (damaged "
                         f"checkpoint?): {type(e).__name__}: {e}") from e
  nnx.replace_by_pure_dict(abstract_state, restored)
  nnx.update(model, abstract_state)
  return model, metadata

