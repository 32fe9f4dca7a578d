"""Hostile weight files: each is refused with a clear error, nothing runs,
nothing is allocated out of proportion to the file, and nothing is written.

Every hostile file is built here, from its format's own writer (torch.save,
h5py, safetensors) and then damaged or forged by hand, so the test does not
depend on how vgg_jax reads it. Each import goes through the command line's
``main`` and must end with exit code 2, one ``error:`` message naming what
was expected, and no ``--output`` directory (nor a temp one beside it).
"""

import collections
import json
import os
import pickle
import struct
import tracemalloc
import zipfile

import h5py
import numpy as np
import pytest

from vgg_jax import weights

torch = pytest.importorskip("torch")

# torchvision's and Keras' VGG layouts, width-reduced (1/8 of the widths, FC
# 16 wide, 10 classes, a 2x2 FC1 window): written out here independently of
# vgg_jax's converters.
CFGS = {
    "A": [8, "M", 16, "M", 32, 32, "M", 64, 64, "M", 64, 64, "M"],
    "D": [8, 8, "M", 16, 16, "M", 32, 32, 32, "M", 64, 64, 64, "M", 64, 64,
          64, "M"],
    "E": [8, 8, "M", 16, 16, "M", 32, 32, 32, 32, "M", 64, 64, 64, 64, "M",
          64, 64, 64, 64, "M"],
}
FC, CLASSES, WINDOW = 16, 10, 2


def _torch_state_dict(net="A"):
  g = torch.Generator().manual_seed(0)
  sd, i, c_in = collections.OrderedDict(), 0, 3
  for v in CFGS[net]:
    if v == "M":
      i += 1
      continue
    sd[f"features.{i}.weight"] = torch.randn(v, c_in, 3, 3, generator=g)
    sd[f"features.{i}.bias"] = torch.randn(v, generator=g)
    i += 2
    c_in = v
  for idx, fin, fout in ((0, c_in * WINDOW**2, FC), (3, FC, FC),
                         (6, FC, CLASSES)):
    sd[f"classifier.{idx}.weight"] = torch.randn(fout, fin, generator=g)
    sd[f"classifier.{idx}.bias"] = torch.randn(fout, generator=g)
  return sd


def _keras_h5(path, net="D"):
  """The legacy layout of vgg16_weights_tf_dim_ordering_tf_kernels.h5."""
  rng = np.random.default_rng(0)
  layers, c_in, block, conv = [], 3, 1, 1
  for v in CFGS[net]:
    if v == "M":
      block, conv = block + 1, 1
      continue
    layers.append((f"block{block}_conv{conv}", (3, 3, c_in, v), v))
    conv, c_in = conv + 1, v
  layers += [("fc1", (c_in * WINDOW**2, FC), FC), ("fc2", (FC, FC), FC),
             ("predictions", (FC, CLASSES), CLASSES)]
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = [n.encode() for n, _, _ in layers]
    for name, kshape, bias in layers:
      g = f.create_group(name)
      names = [f"{name}_W_1:0", f"{name}_b_1:0"]
      g.attrs["weight_names"] = [n.encode() for n in names]
      g.create_dataset(names[0], data=rng.standard_normal(kshape, np.float32))
      g.create_dataset(names[1], data=rng.standard_normal(bias, np.float32))
  return path


def _import_fails(tmp_path, source, path, *extra, match):
  """Import through the command line; it must fail cleanly, writing nothing."""
  before = sorted(p.name for p in tmp_path.iterdir())
  out = tmp_path / "out"
  capsys_err = _run_main(["--from", source, "--input", str(path),
                          "--output", str(out), *extra])
  assert capsys_err.startswith("error: "), capsys_err
  for m in [match] if isinstance(match, str) else match:
    assert m in capsys_err, capsys_err
  assert not out.exists()
  # Nothing else either: no out.tmp-* beside it, nothing new at all.
  assert sorted(p.name for p in tmp_path.iterdir()) == before
  return capsys_err


def _run_main(argv):
  import contextlib
  import io
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    rc = weights.main(argv)
  assert rc == 2, err.getvalue()
  return err.getvalue()


# ---------------------------------------------------------------------------
# A .pth whose pickle would run code.
# ---------------------------------------------------------------------------


class _Shell:
  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


class _Exec:
  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    import builtins
    return (builtins.exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_Shell, _Exec])
@pytest.mark.parametrize("zip_format", [True, False])
def test_pth_that_would_run_code_is_refused_and_runs_nothing(
    tmp_path, payload, zip_format):
  marker = tmp_path.parent / f"pwned-{tmp_path.name}"
  # The payload really runs under a plain unpickler (the test proves itself).
  pickle.loads(pickle.dumps(payload(marker)))
  assert marker.exists()
  marker.unlink()
  sd = _torch_state_dict()
  sd["classifier.6.bias"] = payload(marker)
  path = tmp_path / "evil.pth"
  torch.save(sd, path, _use_new_zipfile_serialization=zip_format)
  called = "system" if payload is _Shell else ".exec"
  err = _import_fails(tmp_path, "torchvision", path, match=[
      "refusing to load", called, "may only hold tensors",
      "torch.save(model.state_dict())", "Nothing in the file was run"])
  assert "Traceback" not in err
  assert not marker.exists()


def test_plain_pickle_that_would_run_code_is_refused(tmp_path):
  """Not even torch's framing: a bare pickle whose first object runs code."""
  marker = tmp_path.parent / f"pwned-{tmp_path.name}"
  path = tmp_path / "evil.pth"
  path.write_bytes(pickle.dumps(_Shell(marker)))
  _import_fails(tmp_path, "torchvision", path,
                match=["refusing to load", "system"])
  assert not marker.exists()


# ---------------------------------------------------------------------------
# Truncated and foreign .h5 files.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.0, 0.01, 0.5, 0.9])
def test_truncated_h5(tmp_path, keep):
  full = _keras_h5(tmp_path / "full.h5").read_bytes()
  (tmp_path / "full.h5").unlink()
  cut = tmp_path / "cut.h5"
  # keep=0.0: an empty file; otherwise cut short (at least the last byte).
  cut.write_bytes(full[:min(int(len(full) * keep), len(full) - 1)])
  _import_fails(tmp_path, "keras", cut,
                match=[str(cut), "truncated", "Keras .h5"])


def test_h5_of_vgg19_imported_as_vgg16(tmp_path):
  path = _keras_h5(tmp_path / "vgg19.h5", net="E")
  _import_fails(tmp_path, "keras", path, "--model", "vgg16", match=[
      "Expected net D (13 conv layers)", "The file matches E",
      "unexpected tensors: block3_conv4/bias"])


def test_h5_of_a_net_that_is_not_vgg(tmp_path):
  """A ResNet-like Keras file: its layers, not VGG's."""
  path = tmp_path / "resnet.h5"
  with h5py.File(path, "w") as f:
    names = ["conv1", "res2a_branch2a", "fc1000"]
    f.attrs["layer_names"] = [n.encode() for n in names]
    for n in names:
      g = f.create_group(n)
      g.attrs["weight_names"] = [f"{n}_W:0".encode(), f"{n}_b:0".encode()]
      g.create_dataset(f"{n}_W:0", data=np.zeros((1, 1, 3, 4), np.float32))
      g.create_dataset(f"{n}_b:0", data=np.zeros(4, np.float32))
  _import_fails(tmp_path, "keras", path, match=[
      "missing layers ['fc1', 'fc2', 'predictions']", "conv1, res2a_branch2a",
      "expected the layers of Keras' VGG16 or VGG19"])


def test_h5_that_is_no_keras_file(tmp_path):
  path = tmp_path / "data.h5"
  with h5py.File(path, "w") as f:
    f.create_dataset("images", data=np.zeros((2, 3), np.uint8))
  _import_fails(tmp_path, "keras", path, match=[
      "no 'layer_names' attribute", "found top-level entries images"])


# ---------------------------------------------------------------------------
# .safetensors with wrong shapes, wrong dtypes, or a lying header.
# ---------------------------------------------------------------------------


def _safetensors(path, tensors):
  from safetensors.numpy import save_file
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
            str(path))
  return path


def _numpy_sd(net="A"):
  return {k: v.numpy() for k, v in _torch_state_dict(net).items()}


def test_safetensors_with_wrong_shapes(tmp_path):
  sd = _numpy_sd()
  sd["features.3.weight"] = sd["features.3.weight"][:, :, :2, :]  # 3x2
  sd["classifier.3.weight"] = sd["classifier.3.weight"].T[:, :8]
  path = _safetensors(tmp_path / "shapes.safetensors", sd)
  _import_fails(tmp_path, "torchvision", path, "--model", "vgg11", match=[
      "features.3.weight: expected shape (16, 8, 3, 3), found (16, 8, 2, 3)",
      "classifier.3.weight: expected shape (16, 16), found (16, 8)",
      "Expected net A"])


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.bool_])
def test_safetensors_with_non_float_weights(tmp_path, dtype):
  sd = _numpy_sd()
  sd["features.0.weight"] = (sd["features.0.weight"] * 10).astype(dtype)
  sd["classifier.6.bias"] = np.ones(CLASSES, dtype)
  path = _safetensors(tmp_path / "ints.safetensors", sd)
  name = np.dtype(dtype).name
  _import_fails(tmp_path, "torchvision", path, match=[
      "expected floating-point weights",
      f"classifier.6.bias ({name})", f"features.0.weight ({name})"])


def _safetensors_parts(path):
  raw = path.read_bytes()
  n = struct.unpack("<Q", raw[:8])[0]
  return json.loads(raw[8:8 + n]), raw[8 + n:]


def _forged(path, header, data, header_len=None):
  text = json.dumps(header).encode()
  n = len(text) if header_len is None else header_len
  path.write_bytes(struct.pack("<Q", n) + text + data)
  return path


@pytest.mark.parametrize("lie", ["past_the_end", "overlap", "short_dtype",
                                 "huge_header"])
def test_safetensors_header_that_lies(tmp_path, lie):
  good = _safetensors(tmp_path / "good.safetensors", _numpy_sd())
  header, data = _safetensors_parts(good)
  good.unlink()
  first = next(k for k in header if k != "__metadata__")
  begin, end = header[first]["data_offsets"]
  header_len = None
  if lie == "past_the_end":
    header[first]["data_offsets"] = [begin, len(data) + 4096]
  elif lie == "overlap":
    second = next(k for k in header if k not in ("__metadata__", first))
    header[second]["data_offsets"] = [begin, begin + (
        header[second]["data_offsets"][1] - header[second]["data_offsets"][0])]
  elif lie == "short_dtype":
    header[first]["dtype"] = "F64"  # twice the bytes the offsets hold
  else:
    header_len = 1 << 40  # a 1 TiB header in a file of kilobytes
  path = _forged(tmp_path / "lies.safetensors", header, data, header_len)
  _import_fails(tmp_path, "torchvision", path, match=[
      str(path), "as a torch state dict", "Re-download the file"])


# ---------------------------------------------------------------------------
# Zip bombs and size lies: refused before anything large is allocated.
# ---------------------------------------------------------------------------


def _refused_within(limit_bytes, fn):
  """Run ``fn`` (which must raise WeightsError); return the peak Python
  allocation, which must stay under ``limit_bytes``."""
  tracemalloc.start()
  try:
    with pytest.raises(weights.WeightsError) as e:
      fn()
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < limit_bytes, f"peak allocation {peak} bytes"
  return str(e.value)


def _zip_with(tmp_path, data, compress=zipfile.ZIP_DEFLATED):
  """A real torch zip .pth whose first storage entry holds ``data``."""
  src = tmp_path / "src.pth"
  torch.save(_torch_state_dict(), src)
  path = tmp_path / "bomb.pth"
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
    entry = next(n for n in zin.namelist() if "/data/" in n)
    for info in zin.infolist():
      if info.filename == entry:
        zout.writestr(entry, data, compress_type=compress)
      else:
        zout.writestr(info, zin.read(info))
  src.unlink()
  return path, entry


def test_zip_bomb_pth_is_refused_before_inflating(tmp_path):
  inflated = 256 << 20  # deflates to ~256 KB: a 1000x ratio
  path, entry = _zip_with(tmp_path, b"\0" * inflated)
  with zipfile.ZipFile(path) as zf:
    assert zf.getinfo(entry).compress_size < inflated // 500
  msg = _refused_within(
      16 << 20, lambda: weights.read_torch_state_dict(path))
  assert entry in msg and "zip bomb" in msg and str(inflated) in msg
  _import_fails(tmp_path, "torchvision", path, match="zip bomb")


def _forge_central_size(path, entry, file_size):
  """Overwrite ``entry``'s uncompressed size in the central directory."""
  raw = bytearray(path.read_bytes())
  cd = raw.rfind(entry.encode()) - 46  # central header: 46 bytes, then name
  assert raw[cd:cd + 4] == b"PK\x01\x02"
  struct.pack_into("<I", raw, cd + 24, file_size)
  path.write_bytes(bytes(raw))


@pytest.mark.parametrize("compress", [zipfile.ZIP_STORED,
                                      zipfile.ZIP_DEFLATED])
def test_zip_entry_with_forged_huge_size_is_refused(tmp_path, compress):
  path, entry = _zip_with(tmp_path, b"\1" * 4096, compress)
  _forge_central_size(path, entry, 0xFFFFFFF0)  # "4 GiB"
  with zipfile.ZipFile(path) as zf:
    assert zf.getinfo(entry).file_size == 0xFFFFFFF0  # the lie is read
  msg = _refused_within(
      16 << 20, lambda: weights.read_torch_state_dict(path))
  assert entry in msg and str(0xFFFFFFF0) in msg
  assert ("corrupt or forged zip" if compress == zipfile.ZIP_STORED
          else "zip bomb") in msg
  _import_fails(tmp_path, "torchvision", path, match=entry)


def test_legacy_pth_storage_announcing_huge_size(tmp_path):
  """The pre-1.6 format: each storage is an int64 element count then its
  bytes. A forged count must not make the reader allocate it."""
  path = tmp_path / "legacy.pth"
  torch.save(collections.OrderedDict(w=torch.ones(4)), path,
             _use_new_zipfile_serialization=False)
  raw = bytearray(path.read_bytes())
  assert struct.unpack("<q", raw[-24:-16])[0] == 4  # the count, then 16 B
  raw[-24:-16] = struct.pack("<q", 1 << 50)
  path.write_bytes(bytes(raw))
  msg = _refused_within(
      16 << 20, lambda: weights.read_torch_state_dict(path))
  assert f"announces {1 << 50} elements" in msg and "truncated" in msg


def test_tensor_view_inflating_a_tiny_storage(tmp_path):
  """An expanded tensor: one stored float viewed as 10^5 x 10^5 (40 GB)."""
  path = tmp_path / "expand.pth"
  sd = _torch_state_dict()
  sd["classifier.6.bias"] = torch.zeros(1).expand(100_000, 100_000)
  torch.save(sd, path)
  msg = _refused_within(
      64 << 20, lambda: weights.read_torch_state_dict(path))
  assert "classifier.6.bias" in msg and "10000000000 elements" in msg
  assert "storage holds 1" in msg
  _import_fails(tmp_path, "torchvision", path, match="refusing to inflate")
