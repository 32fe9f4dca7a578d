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

    python -m vgg_jax.weights --from keras \
        --input vgg16_weights_tf_dim_ordering_tf_kernels.h5 --output DIR
    python -m vgg_jax.weights --from torchvision \
        --input vgg16-397923af.pth --output DIR

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
import re
import shutil
import sys
import tempfile
import zipfile
from typing import Any, Callable, Iterable, Mapping

import jax
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


def _pure(state) -> dict[str, Any]:
  """An nnx.State as nested plain dicts of arrays."""
  from flax import nnx
  return nnx.to_pure_dict(state)


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
  missing = sorted(set(expected) - set(found), key=_natural)
  extra = sorted(set(found) - set(expected), key=_natural)
  bad = [(k, tuple(expected[k].shape), tuple(found[k].shape))
         for k in sorted(set(expected) & set(found), key=_natural)
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


def _natural(key: str):
  """Sort key putting features.2 before features.10."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


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
  model_kwargs = _check_model_kwargs(model_kwargs)
  if not isinstance(input_convention, InputConvention):
    raise TypeError(f"input_convention must be an InputConvention, got "
                    f"{type(input_convention).__name__}")
  state = _pure(_weight_state(model))
  _compare_shapes(
      _flatten(_pure(_weight_state(_abstract_model(model_kwargs)))),
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
    model = _abstract_model(metadata["model"], dtype)
  except (ValueError, TypeError) as e:
    raise WeightsError(f"{path / METADATA_FILE}: cannot build the model "
                       f"{metadata['model']}: {e}") from e
  abstract_state = _weight_state(model)
  # Restored onto this process's first device; callers shard or replicate.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
      _pure(abstract_state))
  with _checkpointer() as ckptr:
    try:
      stored = ckptr.metadata(params_dir).item_metadata
    except Exception as e:  # orbax raises several types for a broken dir
      raise WeightsError(f"{params_dir} is not a readable orbax checkpoint: "
                         f"{e}") from e
    _compare_shapes(_flatten(target), _flatten(dict(stored)),
                    f"the tensors in {params_dir}")
    try:
      restored = ckptr.restore(params_dir, target)
    except Exception as e:  # e.g. a chunk file missing or cut short
      raise WeightsError(f"cannot read the arrays in {params_dir} (damaged "
                         f"checkpoint?): {type(e).__name__}: {e}") from e
  nnx.replace_by_pure_dict(abstract_state, restored)
  nnx.update(model, abstract_state)
  return model, metadata


# --------------------------------------------------------------------------
# Reading torch's .pth files without torch and without arbitrary unpickling.
# --------------------------------------------------------------------------

# torch's legacy typed-storage names (what both .pth formats record) -> dtype.
_TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64,
    "HalfStorage": np.float16, "LongStorage": np.int64,
    "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
# torch's pickle protocol for the legacy (pre-1.6, non-zip) format.
_TORCH_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_TORCH_LEGACY_PROTOCOL = 1001


class _StorageType:
  def __init__(self, name: str):
    self.name = name
    self.dtype = np.dtype(_TORCH_STORAGE_DTYPES[name])


class _Storage:
  """A storage named in the pickle; its bytes are attached later."""

  def __init__(self, key: str, dtype: np.dtype, numel: int):
    self.key, self.dtype, self.numel = key, dtype, numel
    self.data: np.ndarray | None = None  # 1-D, dtype, numel elements


class _TensorRef:
  """torch._utils._rebuild_tensor_v2's arguments, materialised later."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset = storage, int(offset)
    self.size, self.stride = tuple(size), tuple(stride)

  def materialise(self, name: str) -> np.ndarray:
    storage, view_offset = self.storage, 0
    if isinstance(storage, tuple):  # legacy view: (root storage, offset)
      storage, view_offset = storage
    data = storage.data
    if data is None:
      raise WeightsError(f"tensor {name}: its storage {storage.key!r} has no "
                         "data in the file (truncated or corrupt file?)")
    if len(self.size) != len(self.stride) or any(
        n < 0 for n in self.size + self.stride):
      raise WeightsError(f"tensor {name}: bad shape {self.size} or strides "
                         f"{self.stride} (corrupt file?)")
    start = view_offset + self.offset
    last = start + sum((n - 1) * s for n, s in zip(self.size, self.stride))
    if any(n == 0 for n in self.size):
      return np.zeros(self.size, data.dtype)
    if start < 0 or last >= data.size:
      raise WeightsError(
          f"tensor {name} of shape {self.size} reaches element {last} of a "
          f"storage of {data.size} elements (truncated or corrupt file?)")
    item = data.dtype.itemsize
    return np.array(np.lib.stride_tricks.as_strided(
        data[start:], shape=self.size,
        strides=tuple(s * item for s in self.stride)))


def _rebuild_tensor_v2(storage, storage_offset, size, stride,
                       requires_grad=False, backward_hooks=None,
                       metadata=None):
  del requires_grad, backward_hooks, metadata
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


class _RestrictedUnpickler(pickle.Unpickler):
  """Allows only the globals a state dict of plain tensors needs.

  Anything else (a module, a function, a class of some package) is refused
  instead of being imported and called: that is how a malicious .pth file
  runs code under a plain pickle.load.
  """

  _ALLOWED = {
      ("collections", "OrderedDict"): lambda: __import__(
          "collections").OrderedDict,
      ("torch._utils", "_rebuild_tensor_v2"): lambda: _rebuild_tensor_v2,
      ("torch._utils", "_rebuild_parameter"): lambda: _rebuild_parameter,
  }

  def __init__(self, file, persistent_load: Callable[[Any], Any]):
    super().__init__(file, encoding="utf-8")
    self._persistent_load = persistent_load

  def find_class(self, module: str, name: str):
    if (module, name) in self._ALLOWED:
      return self._ALLOWED[(module, name)]()
    if module == "torch" and name in _TORCH_STORAGE_DTYPES:
      return _StorageType(name)
    raise pickle.UnpicklingError(
        f"refusing to load {module}.{name}: a weight file may only hold "
        "tensors in (ordered) dicts (allowed: collections.OrderedDict, "
        "torch._utils._rebuild_tensor_v2, torch.<dtype>Storage). Is this a "
        "state dict saved with torch.save(model.state_dict())?")

  def persistent_load(self, pid):
    return self._persistent_load(pid)


def _storage_from_pid(pid, storages: dict[str, _Storage]):
  if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
    raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
  storage_type, key, _location, numel = pid[1:5]
  view = pid[5] if len(pid) > 5 else None
  if not isinstance(storage_type, _StorageType):
    raise pickle.UnpicklingError(f"unexpected storage type {storage_type!r}")
  key = str(key)
  if key not in storages:
    storages[key] = _Storage(key, storage_type.dtype, int(numel))
  if view is not None:  # legacy format only: (view_key, offset, size)
    return (storages[key], int(view[1]))
  return storages[key]


def _materialise_tree(obj, prefix=""):
  if isinstance(obj, _TensorRef):
    return obj.materialise(prefix)
  if isinstance(obj, dict):
    return {k: _materialise_tree(v, f"{prefix}.{k}" if prefix else str(k))
            for k, v in obj.items()}
  return obj


def _read_torch_zip(path: pathlib.Path) -> dict[str, Any]:
  """torch.save's format since 1.6: a zip of data.pkl and data/<key>."""
  storages: dict[str, _Storage] = {}
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl) != 1:
      raise WeightsError(f"{path}: a torch zip file has one data.pkl, found "
                         f"{len(pkl)} (entries: {_short_list(names)})")
    root = pkl[0][:-len("data.pkl")]
    byteorder = root + "byteorder"
    if byteorder in names and zf.read(byteorder).strip() != b"little":
      raise WeightsError(f"{path}: big-endian torch files are not supported")
    with zf.open(pkl[0]) as f:
      obj = _RestrictedUnpickler(
          f, lambda pid: _storage_from_pid(pid, storages)).load()
    for key, storage in storages.items():
      entry = f"{root}data/{key}"
      if entry not in names:
        raise WeightsError(f"{path}: storage {entry} is missing (truncated "
                           "or corrupt file?)")
      raw = zf.read(entry)
      nbytes = storage.numel * storage.dtype.itemsize
      if len(raw) < nbytes:
        raise WeightsError(f"{path}: storage {entry} has {len(raw)} bytes, "
                           f"expected {nbytes} (truncated file?)")
      storage.data = np.frombuffer(raw[:nbytes], storage.dtype)
  return _materialise_tree(obj)


def _read_torch_legacy(path: pathlib.Path) -> dict[str, Any]:
  """torch.save's format before 1.6 (torchvision's hosted VGG files).

  Pickles of: magic number, protocol, sys info, the object (storages as
  persistent ids), the storage keys; then each storage as an int64 element
  count followed by its raw little-endian bytes.
  """
  storages: dict[str, _Storage] = {}
  with open(path, "rb") as f:
    safe_load = lambda: _RestrictedUnpickler(f, _no_persistent).load()
    if safe_load() != _TORCH_LEGACY_MAGIC:
      raise WeightsError(f"{path} is neither a zip nor a legacy torch file "
                         "(bad magic number)")
    if safe_load() != _TORCH_LEGACY_PROTOCOL:
      raise WeightsError(f"{path}: unsupported legacy torch protocol")
    safe_load()  # sys info: {protocol_version, little_endian, type_sizes}
    obj = _RestrictedUnpickler(
        f, lambda pid: _storage_from_pid(pid, storages)).load()
    keys = safe_load()
    for key in keys:
      storage = storages[str(key)]
      header = f.read(8)
      if len(header) < 8:
        raise WeightsError(f"{path}: file ends before storage {key} "
                           "(truncated file?)")
      numel = int.from_bytes(header, "little", signed=True)
      nbytes = numel * storage.dtype.itemsize
      raw = f.read(nbytes)
      if numel != storage.numel or len(raw) < nbytes:
        raise WeightsError(
            f"{path}: storage {key} should hold {storage.numel} elements, "
            f"found {numel} announced and {len(raw) // storage.dtype.itemsize}"
            " present (truncated or corrupt file?)")
      storage.data = np.frombuffer(raw, storage.dtype)
  return _materialise_tree(obj)


def _no_persistent(pid):
  raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A torch state dict (.pth/.pt zip or legacy, or .safetensors) as numpy.

  ``.pth`` files are read by a restricted unpickler that only rebuilds
  tensors, so torch is not needed and no code in the file can run.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"weight file {path} does not exist")
  try:
    if path.suffix == ".safetensors":
      from safetensors.numpy import load_file
      state = load_file(str(path))
    elif zipfile.is_zipfile(path):
      state = _read_torch_zip(path)
    else:
      state = _read_torch_legacy(path)
  except WeightsError:
    raise
  except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError,
          ValueError, TypeError, OSError, AttributeError) as e:
    raise WeightsError(
        f"cannot read {path} as a torch state dict (.pth written by "
        f"torch.save(model.state_dict()), or .safetensors): "
        f"{type(e).__name__}: {e}") from e
  except Exception as e:  # safetensors' SafetensorError is not a ValueError
    raise WeightsError(f"cannot read {path}: {type(e).__name__}: {e}") from e
  if isinstance(state, dict) and "state_dict" in state and isinstance(
      state["state_dict"], dict):
    state = state["state_dict"]  # a training checkpoint wrapping it
  if not isinstance(state, dict) or not all(
      isinstance(v, np.ndarray) for v in state.values()):
    raise WeightsError(
        f"{path} does not hold a flat state dict of tensors (found "
        f"{type(state).__name__} with entries "
        f"{_short_list([str(k) for k in getattr(state, 'keys', list)()])})")
  return dict(state)


# --------------------------------------------------------------------------
# Converters: a published layout -> our {layer: {kernel, bias, ...}}.
# --------------------------------------------------------------------------

# Nets a torchvision- or Keras-style VGG file can hold: every VGG of the
# table except A-LRN (its LRN shifts torchvision's module indices and no
# published file has it).
_IMPORTABLE = ("A", "B", "C", "D", "E", "B-shallow", "A-BN", "B-BN", "D-BN",
               "E-BN")


def _spec_for(name: str, model_kwargs: Mapping[str, Any]):
  from vgg_jax.models import net_spec
  return net_spec(name, width_mult=model_kwargs["width_mult"],
                  fc_width=model_kwargs["fc_width"],
                  head_window=model_kwargs["head_window"])


def _head_window(fc1_inputs: int, channels: int, what: str) -> int:
  h = math.isqrt(max(fc1_inputs // max(channels, 1), 0))
  if h < 1 or h * h * channels != fc1_inputs:
    raise WeightsError(
        f"{what}: FC1 has {fc1_inputs} inputs, which is not h*h*{channels} "
        f"for the last conv's {channels} channels")
  return h


def _resolve_name(model: str | None) -> str | None:
  if model is None:
    return None
  from vgg_jax.models import canonical_name
  name = canonical_name(model)  # raises on an unknown name
  if name not in _IMPORTABLE:
    raise WeightsError(f"cannot import {model!r} ({name}); importable nets: "
                       f"{', '.join(_IMPORTABLE)}")
  return name


def _pick_net(candidates: Iterable[str], expected_for: Callable[[str], dict],
              found: Mapping[str, Any], requested: str | None,
              what: str) -> str:
  """The net whose expected tensors (names and shapes) ``found`` matches."""
  def mismatch(name):
    try:
      expected = expected_for(name)
    except (ValueError, KeyError) as e:
      return None, e
    try:
      _compare_shapes(expected, found, f"{what} (read as {name})")
    except WeightsError as e:
      return len(set(expected) ^ set(found)) + 1, e
    return 0, None
  candidates = list(candidates)
  results = {n: mismatch(n) for n in candidates}
  matches = [n for n, (score, _) in results.items() if score == 0]
  if requested is not None:
    score, err = results.get(requested) or mismatch(requested)
    if score == 0:
      return requested
    hint = f" The file matches {matches[0]}." if matches else ""
    raise WeightsError(f"{err}\nExpected net {requested} "
                       f"({_describe(requested)}).{hint}")
  if matches:
    return matches[0]
  scored = sorted((s, n) for n, (s, _) in results.items() if s is not None)
  if not scored:
    raise WeightsError(f"{what}: not a VGG weight file ({results})")
  best = scored[0][1]
  raise WeightsError(f"{what} match none of {', '.join(candidates)}; the "
                     f"closest is {best}:\n{results[best][1]}")


def _describe(name: str) -> str:
  from vgg_jax.models import net_spec
  spec = net_spec(name)
  bn = " and BatchNorm" if spec.batch_norm else ""
  return f"{len(spec.convs)} conv layers{bn}"


def _torch_layout(spec) -> dict[str, tuple[str, str]]:
  """torchvision's state-dict key -> (our path, role), generated from spec.

  torchvision's ``features`` is [conv, (bn), relu] per conv layer and a
  max-pool after each stage; ``classifier`` is [fc1, relu, dropout, fc2,
  relu, dropout, fc3].
  """
  if any(c.lrn_after for c in spec.convs):
    raise ValueError("nets with LRN have no torchvision layout")
  layout, i = {}, 0
  for c in spec.convs:
    layout[f"features.{i}.weight"] = (f"{c.name}/kernel", "conv")
    layout[f"features.{i}.bias"] = (f"{c.name}/bias", "copy")
    i += 1
    if spec.batch_norm:
      bn = c.name.replace("conv", "bn")
      for theirs, ours in (("weight", "scale"), ("bias", "bias"),
                           ("running_mean", "mean"), ("running_var", "var")):
        layout[f"features.{i}.{theirs}"] = (f"{bn}/{ours}", "copy")
      layout[f"features.{i}.num_batches_tracked"] = ("", "ignore")
      i += 1
    i += 1  # ReLU
    if c.pool_after:
      i += 1
  for idx, name in ((0, "fc1"), (3, "fc2"), (6, "fc3")):
    layout[f"classifier.{idx}.weight"] = (f"{name}/kernel", name)
    layout[f"classifier.{idx}.bias"] = (f"{name}/bias", "copy")
  return layout


def _expected_torch_shapes(spec, model_kwargs) -> dict[str, "_Shape"]:
  """torchvision's tensor shapes for ``spec`` (inverse of the conversion)."""
  shapes = _flatten(_pure(_weight_state(_abstract_model(
      dict(model_kwargs, name=spec.name)))))
  out = {}
  for key, (ours, role) in _torch_layout(spec).items():
    if role == "ignore":  # num_batches_tracked: optional, see below
      continue
    s = tuple(shapes[ours].shape)
    if role == "conv":  # HWIO -> OIHW
      s = (s[3], s[2], s[0], s[1])
    elif role in ("fc1", "fc2", "fc3"):  # (h, w, c, out) -> (out, c*h*w)
      s = (s[3], s[0] * s[1] * s[2])
    out[key] = _Shape(s)
  return out


class _Shape:
  """Something with a .shape, for shape comparisons without allocating."""

  def __init__(self, shape):
    self.shape = tuple(shape)


def _torch_model_kwargs(state: Mapping[str, np.ndarray],
                        what: str) -> dict[str, Any]:
  """Widths, classes and head window read off a torchvision state dict."""
  for key in ("features.0.weight", "classifier.0.weight",
              "classifier.6.weight"):
    if key not in state:
      raise WeightsError(
          f"{what}: no tensor {key!r}; a torchvision VGG state dict has "
          f"features.N.weight/bias and classifier.{{0,3,6}}.weight/bias "
          f"(found: {_short_list(sorted(state))})")
  conv_keys = sorted((k for k in state if k.startswith("features.")
                      and k.endswith(".weight") and state[k].ndim == 4),
                     key=lambda k: int(k.split(".")[1]))
  if not conv_keys:
    raise WeightsError(f"{what}: no 4-D features.N.weight conv kernels")
  first, last = state[conv_keys[0]], state[conv_keys[-1]]
  fc1, fc3 = state["classifier.0.weight"], state["classifier.6.weight"]
  if fc1.ndim != 2 or fc3.ndim != 2:
    raise WeightsError(f"{what}: classifier weights must be 2-D, found "
                       f"{fc1.shape} and {fc3.shape}")
  return dict(num_classes=int(fc3.shape[0]),
              width_mult=first.shape[0] / 64.0, fc_width=int(fc1.shape[0]),
              head_window=_head_window(fc1.shape[1], last.shape[0], what),
              in_channels=int(first.shape[1]))


def convert_torchvision(state: Mapping[str, np.ndarray], *,
                        model: str | None = None, what: str = "state dict"):
  """A torchvision VGG state dict -> (model kwargs, our flat weights).

  The net (A/B/D/E, with or without BN, any width) is read off the tensors
  unless ``model`` names it.
  """
  requested = _resolve_name(model)
  # BatchNorm's step counter is not a weight, and torchvision's hosted
  # vgg*_bn files predate it (PyTorch 0.4.1): drop it where it sits beside
  # a BN layer's running mean; anywhere else it is an unexpected tensor.
  state = {k: v for k, v in state.items() if not (
      k.endswith(".num_batches_tracked") and
      k[:-len("num_batches_tracked")] + "running_mean" in state)}
  kwargs = _torch_model_kwargs(state, what)
  name = _pick_net(
      _IMPORTABLE,
      lambda n: _expected_torch_shapes(_spec_for(n, kwargs), kwargs),
      state, requested, f"the tensors of {what}")
  kwargs = dict(name=name, **kwargs)
  ours = {}
  for key, (path, role) in _torch_layout(_spec_for(name, kwargs)).items():
    if role == "ignore":
      continue
    w = np.asarray(state[key])
    if role == "conv":  # OIHW -> HWIO
      w = w.transpose(2, 3, 1, 0)
    elif role == "fc1":
      # (out, C*h*h) with inputs in (C, H, W) order (NCHW flatten) ->
      # (out, C, h, h) -> (h, h, C, out).  SPEC section 9: the silent bug.
      h = kwargs["head_window"]
      w = w.reshape(w.shape[0], -1, h, h).transpose(2, 3, 1, 0)
    elif role in ("fc2", "fc3"):
      w = w.T[None, None]
    ours[path] = w
  return kwargs, ours


# Keras' layer names for the head; the conv layers are named as ours.
_KERAS_HEAD = {"fc1": "fc1", "fc2": "fc2", "predictions": "fc3"}


def read_keras_h5(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
  """{layer name: [its weight arrays in order]} from a Keras weight file.

  Layouts read: the legacy one of the published
  ``vgg16/vgg19_weights_tf_dim_ordering_tf_kernels.h5`` (root attribute
  ``layer_names``, a group per layer whose ``weight_names`` attribute names
  its datasets, e.g. ``block1_conv1_W_1:0`` or ``block1_conv1/kernel:0``;
  also under ``model_weights/`` as in a whole-model .h5), and Keras 3's
  ``.weights.h5`` (``layers/<class name>/vars/0, 1``, the layer's name in
  the ``name`` attribute of ``vars``).
  """
  import h5py
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"weight file {path} does not exist")
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise WeightsError(f"cannot open {path} as HDF5 (truncated or not a "
                       f"Keras .h5 file?): {e}") from e
  try:
    with f:
      root = f["model_weights"] if "model_weights" in f else f
      layers = {}
      if "layer_names" in root.attrs:
        for name in root.attrs["layer_names"]:
          name = name.decode() if isinstance(name, bytes) else str(name)
          g = root[name]
          names = [n.decode() if isinstance(n, bytes) else str(n)
                   for n in g.attrs.get("weight_names", [])]
          if names:
            layers[name] = [np.asarray(g[n]) for n in names]
      elif "layers" in root and isinstance(root["layers"], h5py.Group):
        # Groups are named by class (conv2d_3, dense_1); the layer's own
        # name is the 'name' attribute of its vars group.
        for key, g in root["layers"].items():
          if "vars" in g and len(g["vars"]):
            v = g["vars"]
            name = v.attrs.get("name", key)
            name = name.decode() if isinstance(name, bytes) else str(name)
            layers[name] = [np.asarray(v[str(i)]) for i in range(len(v))]
      else:
        raise WeightsError(
            f"{path}: no 'layer_names' attribute (legacy Keras layout) and "
            f"no 'layers' group (Keras 3 .weights.h5); found top-level "
            f"entries {_short_list(list(root))}")
  except (OSError, KeyError, RuntimeError) as e:
    raise WeightsError(f"{path}: cannot read a weight tensor (truncated "
                       f"file?): {type(e).__name__}: {e}") from e
  return layers


def convert_keras(layers: Mapping[str, list[np.ndarray]], *,
                  model: str | None = None, what: str = "Keras weights"):
  """Keras VGG16/VGG19 layers -> (model kwargs, our flat weights)."""
  requested = _resolve_name(model)
  if requested is not None and requested.endswith("-BN"):
    raise WeightsError(f"Keras' VGG files have no BatchNorm; cannot import "
                       f"them as {requested}")
  missing_head = [k for k in _KERAS_HEAD if k not in layers]
  if missing_head:
    convs = [k for k in layers if k.startswith("block")]
    if convs and len(missing_head) == len(_KERAS_HEAD):
      raise WeightsError(
          f"{what} has conv layers but no fc1/fc2/predictions: it is a "
          "'_notop' file (include_top=False). The paper's net needs its "
          "head: use vgg16/vgg19_weights_tf_dim_ordering_tf_kernels.h5")
    raise WeightsError(f"{what}: missing layers {missing_head} (found "
                       f"{_short_list(list(layers))})")
  flat = {}
  for name, arrays in layers.items():
    kernels = [a for a in arrays if a.ndim >= 2]
    biases = [a for a in arrays if a.ndim == 1]
    if len(kernels) != 1 or len(biases) != 1 or len(arrays) != 2:
      raise WeightsError(
          f"{what}: layer {name} should hold one kernel and one bias, found "
          f"shapes {[a.shape for a in arrays]}")
    ours = _KERAS_HEAD.get(name, name)
    flat[f"{ours}/kernel"], flat[f"{ours}/bias"] = kernels[0], biases[0]
  first, fc1 = flat.get("block1_conv1/kernel"), flat["fc1/kernel"]
  convs = sorted(k for k in flat if k.startswith("block") and
                 k.endswith("/kernel"))
  if first is None or first.ndim != 4 or fc1.ndim != 2:
    raise WeightsError(
        f"{what}: expected a 4-D block1_conv1 kernel and a 2-D fc1 kernel, "
        f"found {None if first is None else first.shape} and {fc1.shape}")
  last = flat[convs[-1]]
  kwargs = dict(num_classes=int(flat["fc3/kernel"].shape[-1]),
                width_mult=first.shape[3] / 64.0,
                fc_width=int(fc1.shape[1]),
                head_window=_head_window(fc1.shape[0], last.shape[3], what),
                in_channels=int(first.shape[2]))
  h = kwargs["head_window"]

  def to_ours(k, w):
    if k == "fc1/kernel":
      # Rows in (H, W, C) order: Keras flattens the NHWC map.
      return w.reshape(h, h, -1, w.shape[-1])
    if k in ("fc2/kernel", "fc3/kernel"):
      return w.reshape(1, 1, *w.shape[-2:])
    return w
  ours = {k: to_ours(k, w) for k, w in flat.items()}

  def expected(name):
    return _flatten(_pure(_weight_state(_abstract_model(
        dict(kwargs, name=name)))))
  name = _pick_net([n for n in _IMPORTABLE if not n.endswith("-BN")],
                   expected, ours, requested, f"the layers of {what}")
  return dict(name=name, **kwargs), ours


# --------------------------------------------------------------------------
# Import: read, convert, check, save.
# --------------------------------------------------------------------------

_SOURCES = {"keras": conventions.CAFFE, "torchvision": conventions.TORCHVISION}


def model_from_flat(model_kwargs: Mapping[str, Any],
                    flat: Mapping[str, np.ndarray]):
  """Build the net of ``model_kwargs`` holding the weights ``flat``.

  Built abstractly, so the weights are allocated once (not initialised
  randomly first); every tensor's shape is checked.
  """
  import jax.numpy as jnp
  from flax import nnx
  model = _abstract_model(model_kwargs)
  state = _weight_state(model)
  expected = _flatten(_pure(state))
  _compare_shapes(expected, flat, "the imported tensors")
  nested: dict[str, Any] = {}
  for key, value in flat.items():
    layer, var = key.split("/")
    dtype = expected[key].dtype
    nested.setdefault(layer, {})[var] = jnp.asarray(value, dtype=dtype)
  nnx.replace_by_pure_dict(state, nested)
  nnx.update(model, state)
  return model


def _sha256(path: pathlib.Path) -> str:
  import hashlib
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()


def import_weights(source: str, input_path: str | os.PathLike,
                   output_dir: str | os.PathLike, *, model: str | None = None,
                   overwrite: bool = False) -> pathlib.Path:
  """Convert a published weight file into a pretrained directory.

  Args:
    source: 'keras' (vgg16/vgg19 .h5) or 'torchvision' (.pth/.safetensors).
    input_path: the weight file.
    output_dir: where to write; nothing is left there on any error.
    model: optional net name to insist on ('vgg16', 'D', 'vgg16_bn', ...);
      read off the tensors otherwise.
  """
  if source not in _SOURCES:
    raise WeightsError(f"unknown source {source!r}; expected one of "
                       f"{sorted(_SOURCES)}")
  input_path, output_dir = pathlib.Path(input_path), pathlib.Path(output_dir)
  if model is not None:
    _resolve_name(model)  # an unknown name fails before reading the file
  if output_dir.exists() and (not output_dir.is_dir() or any(
      output_dir.iterdir())) and not overwrite:
    raise FileExistsError(f"{output_dir} exists and is not empty; pass "
                          "--overwrite or choose another --output")
  what = str(input_path)
  if source == "keras":
    kwargs, flat = convert_keras(read_keras_h5(input_path), model=model,
                                 what=what)
  else:
    kwargs, flat = convert_torchvision(read_torch_state_dict(input_path),
                                       model=model, what=what)
  net = model_from_flat(kwargs, flat)
  return save_pretrained(
      output_dir, net, model_kwargs=kwargs,
      input_convention=_SOURCES[source], source=f"{source}:{input_path.name}",
      extra={"imported_from": source, "input_sha256": _sha256(input_path)},
      overwrite=overwrite)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m vgg_jax.weights",
      description="Import published VGG weights into vgg_jax's pretrained "
      "format (orbax params + metadata.json with the input convention).")
  parser.add_argument("--from", dest="source", required=True,
                      choices=sorted(_SOURCES),
                      help="keras: vgg16/vgg19_weights_tf_dim_ordering_tf_"
                      "kernels.h5 (BGR, 0-255, mean pixel); torchvision: "
                      "vgg11/13/16/19(_bn) state dict, .pth or .safetensors "
                      "(RGB, [0,1], mean/std)")
  parser.add_argument("--input", required=True, help="the weight file")
  parser.add_argument("--output", required=True,
                      help="directory to create (must not exist or be empty)")
  parser.add_argument("--model", default=None,
                      help="net to insist on (vgg16, D, vgg16_bn, ...); "
                      "read off the tensors when omitted")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace a non-empty --output directory")
  args = parser.parse_args(argv)
  try:
    out = import_weights(args.source, args.input, args.output,
                         model=args.model, overwrite=args.overwrite)
  except (WeightsError, FileNotFoundError, FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  metadata = read_metadata(out)
  print(f"wrote {out}: {metadata['model']} from {metadata['source']}, input "
        f"convention {metadata['input_convention']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
