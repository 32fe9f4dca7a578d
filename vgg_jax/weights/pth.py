"""Reading torch state dicts (.pth, .safetensors) as numpy, without torch.

A ``.pth`` file is a pickle, and ``pickle.load`` of a hostile one runs any
code it names. Here a restricted unpickler rebuilds only what a state dict of
plain tensors needs (ordered dicts, ``torch._utils._rebuild_tensor_v2`` and
the typed storages) and refuses every other global, so no code in the file
runs and torch is not needed. Sizes are checked before anything is
allocated: a zip entry that decompresses to far more than it occupies (a zip
bomb), a storage announcing more bytes than the file holds, or a tensor
viewing more elements than its storage has, is refused.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import zipfile
from typing import Any, Callable

import numpy as np

from vgg_jax.weights.errors import WeightsError, short_list

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

# Zip-bomb limits. torch.save stores its entries uncompressed, and float
# weights deflate by ~1.1x at most, so an entry that would inflate past
# _BOMB_MIN_BYTES at more than _MAX_INFLATION times its packed size is no
# state dict. The pickle of a state dict is kilobytes; _MAX_PICKLE_BYTES is
# generous.
_BOMB_MIN_BYTES = 16 << 20
_MAX_INFLATION = 100
_MAX_PICKLE_BYTES = 64 << 20


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
    numel = int(np.prod(self.size, dtype=object))
    if numel > data.size:
      # Zero or overlapping strides: a few stored bytes would be copied into
      # a tensor of any size. A state dict of weights never does this.
      raise WeightsError(
          f"tensor {name} of shape {self.size} has {numel} elements but its "
          f"storage holds {data.size} (strides {self.stride} overlap); "
          "refusing to inflate it. Save a plain state dict "
          "(torch.save(model.state_dict()))")
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


class _RefusedGlobal(pickle.UnpicklingError):
  """The pickle names a global outside the allowed few (it would run it)."""


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
    raise _RefusedGlobal(
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
  if not isinstance(numel, int) or numel < 0:
    raise pickle.UnpicklingError(f"storage {key}: bad element count {numel!r}")
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


def _check_zip_entry(path: pathlib.Path, info: zipfile.ZipInfo,
                     archive_bytes: int) -> None:
  """Refuse an entry whose declared sizes cannot be a state dict's, before
  a byte of it is inflated."""
  if info.compress_size > archive_bytes or (
      info.compress_type == zipfile.ZIP_STORED and
      info.file_size != info.compress_size):
    raise WeightsError(
        f"{path}: zip entry {info.filename} declares {info.file_size} bytes "
        f"({info.compress_size} packed) in a file of {archive_bytes} bytes "
        "(corrupt or forged zip). Re-download the file or re-save it with "
        "torch.save(model.state_dict())")
  if info.file_size > _BOMB_MIN_BYTES and (
      info.file_size > _MAX_INFLATION * max(info.compress_size, 1)):
    raise WeightsError(
        f"{path}: zip entry {info.filename} would inflate {info.compress_size}"
        f" bytes to {info.file_size} (more than {_MAX_INFLATION}x): a zip "
        "bomb, not a state dict (torch.save stores tensors uncompressed). "
        "Refusing to read it; use the original file")


def _read_torch_zip(path: pathlib.Path) -> dict[str, Any]:
  """torch.save's format since 1.6: a zip of data.pkl and data/<key>."""
  storages: dict[str, _Storage] = {}
  archive_bytes = path.stat().st_size
  with zipfile.ZipFile(path) as zf:
    for info in zf.infolist():
      _check_zip_entry(path, info, archive_bytes)
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl) != 1:
      raise WeightsError(f"{path}: a torch zip file has one data.pkl, found "
                         f"{len(pkl)} (entries: {short_list(names)})")
    root = pkl[0][:-len("data.pkl")]
    byteorder = root + "byteorder"
    if byteorder in names and zf.read(byteorder).strip() != b"little":
      raise WeightsError(f"{path}: big-endian torch files are not supported")
    if zf.getinfo(pkl[0]).file_size > _MAX_PICKLE_BYTES:
      raise WeightsError(
          f"{path}: {pkl[0]} declares {zf.getinfo(pkl[0]).file_size} bytes; "
          f"a state dict's pickle is far below {_MAX_PICKLE_BYTES} (corrupt "
          "or hostile file)")
    with zf.open(pkl[0]) as f:
      obj = _RestrictedUnpickler(
          f, lambda pid: _storage_from_pid(pid, storages)).load()
    for key, storage in storages.items():
      entry = f"{root}data/{key}"
      if entry not in names:
        raise WeightsError(f"{path}: storage {entry} is missing (truncated "
                           "or corrupt file?)")
      nbytes = storage.numel * storage.dtype.itemsize
      declared = zf.getinfo(entry).file_size
      if declared < nbytes:  # checked before reading: nothing allocated
        raise WeightsError(f"{path}: storage {entry} has {declared} bytes, "
                           f"expected {nbytes} (truncated file?)")
      with zf.open(entry) as f:
        raw = f.read(nbytes)
      if len(raw) < nbytes:
        raise WeightsError(f"{path}: storage {entry} has {len(raw)} bytes, "
                           f"expected {nbytes} (truncated file?)")
      storage.data = np.frombuffer(raw, storage.dtype)
  return _materialise_tree(obj)


def _read_torch_legacy(path: pathlib.Path) -> dict[str, Any]:
  """torch.save's format before 1.6 (torchvision's hosted VGG files).

  Pickles of: magic number, protocol, sys info, the object (storages as
  persistent ids), the storage keys; then each storage as an int64 element
  count followed by its raw little-endian bytes.
  """
  storages: dict[str, _Storage] = {}
  file_bytes = path.stat().st_size
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
      if numel < 0 or nbytes > file_bytes - f.tell():
        # Checked before reading: f.read(n) allocates n bytes up front.
        raise WeightsError(
            f"{path}: storage {key} announces {numel} elements ({nbytes} "
            f"bytes) but only {file_bytes - f.tell()} bytes follow "
            "(truncated or corrupt file?)")
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
  except _RefusedGlobal as e:
    raise WeightsError(
        f"{path} is refused: {e} Nothing in the file was run. Load only "
        "weight files from a source you trust, and re-save them as a plain "
        "state dict or .safetensors") from e
  except Exception as e:  # pylint: disable=broad-except
    # Whatever a damaged or hostile file makes pickle, zipfile or
    # safetensors raise (SafetensorError is not a ValueError; a deeply
    # nested pickle raises RecursionError) becomes one clear error.
    raise WeightsError(
        f"cannot read {path} as a torch state dict (expected a .pth written "
        "by torch.save(model.state_dict()), or a .safetensors file): "
        f"{type(e).__name__}: {e}. Re-download the file, or re-save it from "
        "torch with torch.save(model.state_dict(), path)") from e
  if isinstance(state, dict) and "state_dict" in state and isinstance(
      state["state_dict"], dict):
    state = state["state_dict"]  # a training checkpoint wrapping it
  if not isinstance(state, dict) or not all(
      isinstance(v, np.ndarray) for v in state.values()):
    raise WeightsError(
        f"{path} does not hold a flat state dict of tensors (found "
        f"{type(state).__name__} with entries "
        f"{short_list([str(k) for k in getattr(state, 'keys', list)()])})")
  return dict(state)

