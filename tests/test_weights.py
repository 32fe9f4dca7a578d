"""Published weights (conventions in docs/weights.md): the format, and the
importers checked against independent implementations run on the same photo.

* Keras 3 (JAX backend, no TensorFlow) builds VGG16 / a width-reduced VGG19;
  its weights are written in the published file's layout (and in Keras 3's
  own layouts), imported, and both nets score a real photo, each side
  preprocessing by its own convention.
* torch.nn.functional is the torchvision reference: conv2d / max_pool2d /
  batch_norm on NCHW, torch.flatten (so FC1 sees (C, H, W) order) and linear,
  written here from torchvision's cfg lists.

The FC1 flattening order gives no error when wrong, only wrong predictions:
one test shows that the wrong order changes the logits, so the comparisons
above would catch it.
"""

import collections
import json
import os
import pathlib
import pickle
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from PIL import Image

from vgg_jax import conventions, weights

torch = pytest.importorskip("torch")
F = torch.nn.functional

# torchvision's cfgs (torchvision/models/vgg.py): widths, "M" = max-pool.
TORCHVISION_CFGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512,
          "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
          512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512,
          512, "M", 512, 512, 512, 512, "M"],
}
# Width-reduced nets for the cheap tests: 1/8 of the conv widths, FC 64 wide,
# 10 classes, 64x64 photos -> a 2x2 final map, so the flattening order of FC1
# still matters (a 1x1 map would hide it).
SMALL = dict(width_mult=0.125, fc_width=64, num_classes=10)
SMALL_SIZE = 64


def _photos(size, count=2):
  """Real photos (RGB uint8), resized to size x size."""
  imgs = [skimage.data.astronaut(), skimage.data.coffee()][:count]
  return np.stack([np.asarray(Image.fromarray(i).resize(
      (size, size), Image.BILINEAR)) for i in imgs])


def _assert_logits_close(ours, ref, rtol=1e-3):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape
  scale = np.abs(ref).max()
  assert scale > 0
  err = np.abs(ours - ref).max() / scale
  print(f"max |ours - ref| / max |ref| = {err:.2e}")  # shown with -s
  assert err < rtol, f"max |ours - ref| / max |ref| = {err:.2e}"
  # The ranking a user sees is the same too.
  np.testing.assert_array_equal(np.argsort(-ours, -1)[:, :5],
                                np.argsort(-ref, -1)[:, :5])


def _softmax(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


# ---------------------------------------------------------------------------
# The torchvision reference.
# ---------------------------------------------------------------------------


def _torch_cfg(net, width_mult):
  return [v if v == "M" else max(1, round(v * width_mult))
          for v in TORCHVISION_CFGS[net]]


def _torch_state_dict(net, *, bn=False, width_mult=1.0, fc_width=4096,
                      num_classes=1000, head_window=7, seed=0):
  """A random torchvision-layout VGG state dict (He-scaled, random biases)."""
  g = torch.Generator().manual_seed(seed)
  randn = lambda *s: torch.randn(*s, generator=g)
  sd, i, c_in = collections.OrderedDict(), 0, 3
  for v in _torch_cfg(net, width_mult):
    if v == "M":
      i += 1
      continue
    sd[f"features.{i}.weight"] = randn(v, c_in, 3, 3) * (2 / (9 * c_in)) ** .5
    sd[f"features.{i}.bias"] = randn(v) * 0.1
    if bn:
      i += 1
      sd[f"features.{i}.weight"] = 1 + 0.2 * randn(v)
      sd[f"features.{i}.bias"] = 0.1 * randn(v)
      sd[f"features.{i}.running_mean"] = 0.2 * randn(v)
      sd[f"features.{i}.running_var"] = 0.5 + torch.rand(v, generator=g)
      sd[f"features.{i}.num_batches_tracked"] = torch.tensor(7)
    i += 2
    c_in = v
  fan = [c_in * head_window ** 2, fc_width, fc_width]
  outs = [fc_width, fc_width, num_classes]
  for idx, fin, fout in zip((0, 3, 6), fan, outs):
    sd[f"classifier.{idx}.weight"] = randn(fout, fin) * (2 / fin) ** .5
    sd[f"classifier.{idx}.bias"] = randn(fout) * 0.1
  return sd


def _torch_forward(sd, net, images_uint8, *, bn=False, width_mult=1.0):
  """torchvision's VGG forward in torch.nn.functional (NCHW, eval mode)."""
  x = torch.from_numpy(
      conventions.TORCHVISION.normalise(images_uint8)).permute(0, 3, 1, 2)
  i = 0
  with torch.no_grad():
    for v in _torch_cfg(net, width_mult):
      if v == "M":
        x = F.max_pool2d(x, 2, 2)
        i += 1
        continue
      x = F.conv2d(x, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"],
                   padding=1)
      if bn:
        i += 1
        x = F.batch_norm(x, sd[f"features.{i}.running_mean"],
                         sd[f"features.{i}.running_var"],
                         sd[f"features.{i}.weight"], sd[f"features.{i}.bias"],
                         training=False, eps=1e-5)
      x = F.relu(x)
      i += 2
    # torchvision's AdaptiveAvgPool2d((7, 7)) is the identity on the 7x7 map
    # of a 224 input; the width-reduced tests use a 2x2 head instead.
    x = torch.flatten(x, 1)  # (C, H, W) order
    x = F.relu(F.linear(x, sd["classifier.0.weight"], sd["classifier.0.bias"]))
    x = F.relu(F.linear(x, sd["classifier.3.weight"], sd["classifier.3.bias"]))
    x = F.linear(x, sd["classifier.6.weight"], sd["classifier.6.bias"])
  return x.numpy()


def _import(tmp_path, source, input_path, *extra):
  out = tmp_path / "imported"
  rc = weights.main(["--from", source, "--input", str(input_path),
                     "--output", str(out), *extra])
  assert rc == 0
  return weights.load_pretrained(out)


def _our_logits(model, metadata, images_uint8):
  # The convention travels with the weights: nothing passed by hand.
  convention = weights.input_convention_of(metadata)
  return np.asarray(model(jnp.asarray(convention.normalise(images_uint8))))


def test_full_size_torchvision_vgg11_matches_functional_reference(tmp_path):
  sd = _torch_state_dict("A", seed=1)
  path = tmp_path / "vgg11.pth"
  torch.save(sd, path)
  model, metadata = _import(tmp_path, "torchvision", path)
  # torchvision pools with floor rounding; the import records it (its
  # weights are evaluated the way they were trained).
  assert metadata["model"] == dict(name="A", num_classes=1000, width_mult=1.0,
                                   fc_width=4096, head_window=7,
                                   in_channels=3, pool_rounding="floor")
  assert weights.input_convention_of(metadata) == conventions.TORCHVISION
  photos = _photos(224, count=1)  # one full-size forward per side
  ref = _torch_forward(sd, "A", photos)
  del sd
  ours = _our_logits(model, metadata, photos)
  _assert_logits_close(ours, ref)
  np.testing.assert_allclose(_softmax(ours), _softmax(ref), atol=1e-4)


@pytest.mark.parametrize("net,bn,fmt", [
    ("A", True, "pth"), ("B", False, "safetensors"),
    ("D", True, "legacy_pth"), ("E", False, "pth"),
    ("E", True, "safetensors")])
def test_small_torchvision_nets_match_functional_reference(tmp_path, net, bn,
                                                           fmt):
  sd = _torch_state_dict(net, bn=bn, head_window=2, seed=2, **SMALL)
  if fmt == "legacy_pth":
    # torchvision's hosted vgg*_bn files (2017) have no num_batches_tracked.
    sd = collections.OrderedDict(
        (k, v) for k, v in sd.items() if "num_batches" not in k)
  path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pth")
  if fmt == "safetensors":
    from safetensors.torch import save_file
    save_file(dict(sd), str(path))
  else:
    torch.save(sd, path, _use_new_zipfile_serialization=fmt == "pth")
  model, metadata = _import(tmp_path, "torchvision", path)
  assert metadata["model"]["name"] == net + ("-BN" if bn else "")
  photos = _photos(SMALL_SIZE)
  _assert_logits_close(
      _our_logits(model, metadata, photos),
      _torch_forward(sd, net, photos, bn=bn, width_mult=SMALL["width_mult"]))


def test_restricted_pth_reader_agrees_with_torch_load(tmp_path):
  sd = _torch_state_dict("A", bn=True, head_window=2, **SMALL)
  sd["strided"] = torch.randn(5, 7).t()  # non-contiguous
  sd["view"] = torch.arange(20.0)[3:9]  # offset into a shared storage
  sd["half"] = torch.randn(4).half()
  for zip_format in (True, False):
    path = tmp_path / f"zip{zip_format}.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=zip_format)
    ours = weights.read_torch_state_dict(path)
    theirs = torch.load(path, weights_only=True)
    assert list(ours) == list(theirs)
    for k, v in theirs.items():
      assert ours[k].dtype == v.numpy().dtype
      np.testing.assert_array_equal(ours[k], v.numpy())
  # A training checkpoint that wraps the state dict is unwrapped.
  torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ckpt.pth")
  ours = weights.read_torch_state_dict(tmp_path / "ckpt.pth")
  np.testing.assert_array_equal(ours["strided"], sd["strided"].numpy())


class _RunsCode:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_pth_with_code_is_refused_without_running_it(tmp_path):
  marker = tmp_path / "pwned"
  sd = {"features.0.weight": torch.zeros(1), "evil": _RunsCode(marker)}
  path = tmp_path / "evil.pth"
  torch.save(sd, path)
  with pytest.raises(weights.WeightsError, match="refusing to load"):
    weights.read_torch_state_dict(path)
  assert not marker.exists()


# ---------------------------------------------------------------------------
# The Keras reference (Keras 3 on JAX).
# ---------------------------------------------------------------------------


def _numpy_zeros(shape, dtype=None):
  return np.zeros(shape, np.float32)


def _keras_small_vgg(net, size):
  """keras.applications' VGG layout (layer names included), width-reduced."""
  import keras
  from vgg_jax.models import net_spec
  spec = net_spec(net, head_window=2, **{k: SMALL[k] for k in
                                         ("width_mult", "fc_width")})
  # numpy initialisers: Keras' own would compile a JAX op per shape, which
  # is slow on a loaded 2-core machine; _randomise_keras sets the values.
  kw = dict(kernel_initializer=_numpy_zeros, bias_initializer=_numpy_zeros)
  x = inp = keras.Input((size, size, 3))
  for c in spec.convs:
    x = keras.layers.Conv2D(c.features, 3, padding="same", activation="relu",
                            name=c.name, **kw)(x)
    if c.pool_after:
      x = keras.layers.MaxPooling2D(2, 2, name=c.name[:6] + "_pool")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(SMALL["fc_width"], activation="relu", name="fc1",
                         **kw)(x)
  x = keras.layers.Dense(SMALL["fc_width"], activation="relu", name="fc2",
                         **kw)(x)
  x = keras.layers.Dense(SMALL["num_classes"], name="predictions", **kw)(x)
  return keras.Model(inp, x, name="vgg_small")


def _randomise_keras(model, seed):
  """Random He-scaled kernels and random biases (Keras' biases start at 0).

  Glorot-scaled kernels would shrink the signal layer by layer until the
  biases alone decided the logits, and a wrong FC1 order could go unseen.
  """
  rng = np.random.default_rng(seed)
  new = []
  for w in model.get_weights():
    if w.ndim == 1:
      new.append((0.1 * rng.standard_normal(w.shape)).astype(np.float32))
    else:
      fan_in = np.prod(w.shape[:-1])
      new.append(rng.standard_normal(w.shape, np.float32)
                 * np.float32(np.sqrt(2 / fan_in)))
  model.set_weights(new)


def _write_published_h5(model, path, nested=False):
  """The legacy layout of vgg16_weights_tf_dim_ordering_tf_kernels.h5.

  Root attribute layer_names; one group per layer whose weight_names
  attribute lists its datasets: '<layer>_W_1:0', '<layer>_b_1:0' (the 2016
  release) or, with ``nested``, '<layer>/kernel:0' (later Keras 2 saves).
  """
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = [l.name.encode() for l in model.layers]
    f.attrs["backend"] = b"tensorflow"
    f.attrs["keras_version"] = b"2.2.4"
    for layer in model.layers:
      g = f.create_group(layer.name)
      ws = layer.get_weights()
      if nested:
        names = [f"{layer.name}/{n}:0" for n in ("kernel", "bias")][:len(ws)]
      else:
        names = [f"{layer.name}_{n}_1:0" for n in ("W", "b")][:len(ws)]
      g.attrs["weight_names"] = [n.encode() for n in names]
      for n, w in zip(names, ws):
        g.create_dataset(n, data=w)


def test_full_size_keras_vgg16_matches_keras(tmp_path):
  import keras
  from keras.applications import vgg16
  keras.utils.set_random_seed(0)
  ref_model = vgg16.VGG16(weights=None, classifier_activation=None)
  _randomise_keras(ref_model, seed=3)
  path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
  _write_published_h5(ref_model, path)
  photos = _photos(224, count=1)  # one full-size forward per side
  ref = np.asarray(ref_model.predict(
      vgg16.preprocess_input(photos.astype(np.float32)), verbose=0))
  del ref_model
  model, metadata = _import(tmp_path, "keras", path)
  assert metadata["model"]["name"] == "D"
  assert weights.input_convention_of(metadata) == conventions.CAFFE
  ours = _our_logits(model, metadata, photos)
  _assert_logits_close(ours, ref)
  np.testing.assert_allclose(_softmax(ours), _softmax(ref), atol=1e-4)


@pytest.mark.parametrize("net,layout", [
    ("D", "published_W_b"), ("D", "published_nested"),
    ("E", "keras3_weights_h5"), ("E", "keras3_model_h5")])
def test_small_keras_nets_in_each_layout_match_keras(tmp_path, net, layout):
  import keras
  keras.utils.set_random_seed(1)
  ref_model = _keras_small_vgg(net, SMALL_SIZE)
  _randomise_keras(ref_model, seed=4)
  if layout.startswith("published"):
    path = tmp_path / "w.h5"
    _write_published_h5(ref_model, path, nested=layout.endswith("nested"))
    # Keras' own legacy loader reads our file into the same weights: the
    # layout written above is one Keras accepts.
    check = _keras_small_vgg(net, SMALL_SIZE)
    check.load_weights(str(path))
    for a, b in zip(check.get_weights(), ref_model.get_weights()):
      np.testing.assert_array_equal(a, b)
  elif layout == "keras3_weights_h5":
    path = tmp_path / "w.weights.h5"
    ref_model.save_weights(str(path))
  else:
    path = tmp_path / "model.h5"
    ref_model.save(str(path))  # legacy whole-model HDF5: model_weights/
  photos = _photos(SMALL_SIZE)
  from keras.applications import vgg16
  ref = np.asarray(ref_model.predict(
      vgg16.preprocess_input(photos.astype(np.float32)), verbose=0))
  model, metadata = _import(tmp_path, "keras", path)
  assert metadata["model"]["name"] == net
  _assert_logits_close(_our_logits(model, metadata, photos), ref)


# ---------------------------------------------------------------------------
# The classic bug would be caught.
# ---------------------------------------------------------------------------


def test_wrong_fc1_flattening_order_changes_the_logits():
  sd = _torch_state_dict("A", head_window=2, seed=5, **SMALL)
  photos = _photos(SMALL_SIZE)
  ref = _torch_forward(sd, "A", photos, width_mult=SMALL["width_mult"])
  kwargs, flat = weights.convert_torchvision(
      {k: v.numpy() for k, v in sd.items()})
  right = weights.model_from_flat(kwargs, flat)
  assert kwargs["pool_rounding"] == "floor"  # torchvision's ceil_mode=False
  # The bug: reading classifier.0's (C, H, W) inputs as if (H, W, C).
  w = sd["classifier.0.weight"].numpy()
  h = kwargs["head_window"]
  wrong_flat = dict(flat, **{"fc1/kernel": w.T.reshape(h, h, -1, w.shape[0])})
  wrong = weights.model_from_flat(kwargs, wrong_flat)
  x = jnp.asarray(conventions.TORCHVISION.normalise(photos))
  _assert_logits_close(np.asarray(right(x)), ref)
  err = np.abs(np.asarray(wrong(x)) - ref).max() / np.abs(ref).max()
  print(f"wrong FC1 order: max |wrong - ref| / max |ref| = {err:.2e}")
  assert err > 0.05, f"the wrong order went unnoticed ({err:.2e})"


def test_wrong_fc1_order_is_visible_to_the_keras_comparison():
  keras_model = _keras_small_vgg("D", SMALL_SIZE)
  _randomise_keras(keras_model, seed=6)
  from keras.applications import vgg16
  photos = _photos(SMALL_SIZE)
  ref = np.asarray(keras_model.predict(
      vgg16.preprocess_input(photos.astype(np.float32)), verbose=0))
  layers = {l.name: l.get_weights() for l in keras_model.layers
            if l.get_weights()}
  kwargs, flat = weights.convert_keras(layers)
  # The authors' Caffe weights: Caffe's ceil pooling.  (At this size, a
  # multiple of 32, ceil and Keras' own floor pooling agree.)
  assert kwargs["pool_rounding"] == "ceil"
  x = jnp.asarray(conventions.CAFFE.normalise(photos))
  _assert_logits_close(np.asarray(weights.model_from_flat(kwargs, flat)(x)),
                       ref)
  # The bug the other way round: Keras' (H, W, C) rows read as (C, H, W).
  k = layers["fc1"][0]
  h = kwargs["head_window"]
  wrong = k.reshape(-1, h, h, k.shape[1]).transpose(1, 2, 0, 3)
  model = weights.model_from_flat(kwargs, dict(flat, **{"fc1/kernel": wrong}))
  err = np.abs(np.asarray(model(x)) - ref).max() / np.abs(ref).max()
  assert err > 0.05, f"the wrong order went unnoticed ({err:.2e})"


# ---------------------------------------------------------------------------
# Bad input: a clear error and nothing at --output.
# ---------------------------------------------------------------------------


@pytest.fixture
def small_vgg11_pth(tmp_path):
  sd = _torch_state_dict("A", head_window=2, **SMALL)
  path = tmp_path / "vgg11_small.pth"
  torch.save(sd, path)
  return sd, path


def _import_fails(tmp_path, source, path, *extra, match, capsys):
  out = tmp_path / "out"
  rc = weights.main(["--from", source, "--input", str(path), "--output",
                     str(out), *extra])
  err = capsys.readouterr().err
  assert rc == 2
  assert err.startswith("error: ")
  for m in [match] if isinstance(match, str) else match:
    assert m in err, err
  assert not out.exists()
  # No temp directory left beside it either.
  assert not [p for p in tmp_path.iterdir() if p.name.startswith("out.")]
  return err


def _edited(tmp_path, sd, **changes):
  sd = collections.OrderedDict(sd)
  for k, v in changes.items():
    k = k.replace("__", ".")
    if v is None:
      del sd[k]
    else:
      sd[k] = v
  path = tmp_path / "edited.pth"
  torch.save(sd, path)
  return path


def test_unknown_model_name(tmp_path, small_vgg11_pth, capsys):
  _import_fails(tmp_path, "torchvision", small_vgg11_pth[1], "--model",
                "vgg17", match=["unknown model name 'vgg17'", "vgg16"],
                capsys=capsys)


def test_file_of_another_net(tmp_path, small_vgg11_pth, capsys):
  _import_fails(tmp_path, "torchvision", small_vgg11_pth[1], "--model",
                "vgg16", match=["Expected net D (13 conv layers)",
                                "The file matches A",
                                "missing tensors: features.2.bias, "
                                "features.2.weight, features.5.bias"],
                capsys=capsys)


def test_missing_tensor(tmp_path, small_vgg11_pth, capsys):
  path = _edited(tmp_path, small_vgg11_pth[0], classifier__3__bias=None)
  _import_fails(tmp_path, "torchvision", path, "--model", "vgg11",
                match="missing tensors: classifier.3.bias", capsys=capsys)


def test_mis_shaped_tensor(tmp_path, small_vgg11_pth, capsys):
  path = _edited(tmp_path, small_vgg11_pth[0],
                 features__3__weight=torch.zeros(16, 8, 5, 5))
  _import_fails(tmp_path, "torchvision", path, match=[
      "features.3.weight: expected shape (16, 8, 3, 3), found (16, 8, 5, 5)",
      "closest is A"], capsys=capsys)


def test_unexpected_tensor(tmp_path, small_vgg11_pth, capsys):
  path = _edited(tmp_path, small_vgg11_pth[0],
                 features__99__weight=torch.zeros(3))
  _import_fails(tmp_path, "torchvision", path,
                match="unexpected tensors: features.99.weight", capsys=capsys)


@pytest.mark.parametrize("fmt", ["pth", "legacy_pth", "safetensors", "h5"])
def test_truncated_file(tmp_path, small_vgg11_pth, capsys, fmt):
  sd, _ = small_vgg11_pth
  src = tmp_path / f"full.{fmt}"
  source = "torchvision"
  if fmt == "safetensors":
    from safetensors.torch import save_file
    src = tmp_path / "full.safetensors"
    save_file(dict(sd), str(src))
  elif fmt == "h5":
    source = "keras"
    _write_published_h5(_keras_small_vgg("D", SMALL_SIZE), src)
  else:
    torch.save(sd, src, _use_new_zipfile_serialization=fmt == "pth")
  data = src.read_bytes()
  cut = tmp_path / ("cut" + src.suffix)
  cut.write_bytes(data[:int(len(data) * 0.7)])
  _import_fails(tmp_path, source, cut, match=str(cut), capsys=capsys)


def test_keras_notop_file(tmp_path, capsys):
  import keras
  full = _keras_small_vgg("D", SMALL_SIZE)
  notop = keras.Model(full.input, full.get_layer("block5_pool").output)
  path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
  _write_published_h5(notop, path)
  _import_fails(tmp_path, "keras", path, match=["'_notop' file",
                                                "no fc1/fc2/predictions"],
                capsys=capsys)


def test_keras_file_of_another_net(tmp_path, capsys):
  path = tmp_path / "vgg16_small.h5"
  _write_published_h5(_keras_small_vgg("D", SMALL_SIZE), path)
  _import_fails(tmp_path, "keras", path, "--model", "vgg19", match=[
      "Expected net E (16 conv layers). The file matches D.",
      "missing tensors: block3_conv4/bias"], capsys=capsys)
  _import_fails(tmp_path, "keras", path, "--model", "vgg16_bn",
                match="no BatchNorm", capsys=capsys)


def test_wrong_source_for_the_file(tmp_path, small_vgg11_pth, capsys):
  _import_fails(tmp_path, "keras", small_vgg11_pth[1],
                match="as HDF5", capsys=capsys)


def test_existing_output_is_not_overwritten(tmp_path, small_vgg11_pth,
                                            capsys):
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  rc = weights.main(["--from", "torchvision", "--input",
                     str(small_vgg11_pth[1]), "--output", str(out)])
  assert rc == 2 and "not empty" in capsys.readouterr().err
  assert [p.name for p in out.iterdir()] == ["keep.txt"]
  rc = weights.main(["--from", "torchvision", "--input",
                     str(small_vgg11_pth[1]), "--output", str(out),
                     "--overwrite"])
  assert rc == 0
  assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "params"]
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "out", "vgg11_small.pth"]


def test_command_line_entry_point(tmp_path, small_vgg11_pth):
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "-m", "vgg_jax.weights", "--from", "torchvision",
       "--input", str(small_vgg11_pth[1]), "--output", str(out), "--model",
       "vgg13"], capture_output=True, text=True,
      cwd=pathlib.Path(__file__).parents[1])
  assert proc.returncode == 2
  assert "Expected net B" in proc.stderr and "The file matches A" in (
      proc.stderr)
  assert not out.exists()


# ---------------------------------------------------------------------------
# The format itself.
# ---------------------------------------------------------------------------


def _small_bn_model(seed=0):
  """A width-reduced D-BN with random weights and BatchStats.

  Built from numpy arrays (model_from_flat), not create_model's initialisers,
  which compile a JAX op per shape: slow on a loaded 2-core machine.
  """
  kwargs = dict(name="D-BN", head_window=2, **SMALL)
  rng = np.random.default_rng(seed)
  shapes = weights.expected_tensors(kwargs)
  flat = {}
  for key, s in shapes.items():
    if key.endswith("/var"):
      flat[key] = rng.uniform(0.5, 2, s.shape).astype(np.float32)
    else:
      fan_in = np.prod(s.shape[:-1]) if len(s.shape) > 1 else 25
      flat[key] = (rng.standard_normal(s.shape) * np.sqrt(2 / fan_in)).astype(
          np.float32)
  return weights.model_from_flat(kwargs, flat), kwargs


def test_save_load_round_trip(tmp_path):
  model, kwargs = _small_bn_model()
  names = [f"class{i}" for i in range(10)]
  out = weights.save_pretrained(
      tmp_path / "pre", model, model_kwargs=kwargs,
      input_convention=conventions.PAPER, source="unit test",
      class_names=names, extra={"note": "hello"})
  assert sorted(p.name for p in tmp_path.iterdir()) == ["pre"]
  loaded, metadata = weights.load_pretrained(out)
  assert metadata["class_names"] == names and metadata["note"] == "hello"
  assert weights.input_convention_of(metadata) == conventions.PAPER
  assert metadata["format"] == "vgg_jax.pretrained.v1"
  x = jnp.asarray(conventions.PAPER.normalise(_photos(SMALL_SIZE)))
  np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
  np.testing.assert_array_equal(loaded.block3_bn2.var[...],
                                model.block3_bn2.var[...])
  bf16, _ = weights.load_pretrained(out, dtype=jnp.bfloat16)
  assert bf16.fc1.kernel[...].dtype == jnp.float32  # weights as stored
  assert jax.eval_shape(bf16.features, x).dtype == jnp.bfloat16


def test_save_refuses_model_kwargs_that_do_not_rebuild_it(tmp_path):
  model, kwargs = _small_bn_model()
  with pytest.raises(weights.WeightsError, match="missing tensors"):
    weights.save_pretrained(tmp_path / "pre", model,
                            model_kwargs=dict(kwargs, name="E-BN"),
                            input_convention=conventions.PAPER, source="x")
  assert not list(tmp_path.iterdir())


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
  model, kwargs = _small_bn_model()
  import orbax.checkpoint as ocp

  def broken_save(self, *a, **k):
    raise OSError("disk full")
  monkeypatch.setattr(ocp.StandardCheckpointer, "save", broken_save)
  with pytest.raises(OSError, match="disk full"):
    weights.save_pretrained(tmp_path / "pre", model, model_kwargs=kwargs,
                            input_convention=conventions.PAPER, source="x")
  assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def saved_small(tmp_path_factory):
  model, kwargs = _small_bn_model()
  return weights.save_pretrained(
      tmp_path_factory.mktemp("saved") / "pre", model, model_kwargs=kwargs,
      input_convention=conventions.PAPER, source="x")


def _copy_with_metadata(saved, dest, edit):
  import shutil
  shutil.copytree(saved, dest)
  meta = json.loads((dest / "metadata.json").read_text())
  edit(meta)
  (dest / "metadata.json").write_text(json.dumps(meta))
  return dest


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.update(format="something.v0"),
     "expected format 'vgg_jax.pretrained.v1', found 'something.v0'"),
    (lambda m: m.pop("input_convention"), "no 'input_convention'"),
    (lambda m: m["input_convention"].pop("std"), "missing ['std']"),
    (lambda m: m["model"].update(width_mult=0.25),
     "block1_conv1/kernel: expected shape (3, 3, 3, 16), found (3, 3, 3, 8)"),
    (lambda m: m["model"].update(name="D"), "unexpected tensors: block1_bn1"),
    (lambda m: m["model"].update(name="vgg17"), "unknown model name"),
])
def test_load_rejects_bad_metadata(tmp_path, saved_small, edit, match):
  bad = _copy_with_metadata(saved_small, tmp_path / "bad", edit)
  with pytest.raises(weights.WeightsError) as e:
    weights.load_pretrained(bad)
  assert match in str(e.value)


def test_load_rejects_missing_pieces(tmp_path, saved_small):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    weights.load_pretrained(tmp_path / "nowhere")
  import shutil
  d = tmp_path / "nometa"
  shutil.copytree(saved_small, d)
  (d / "metadata.json").unlink()
  with pytest.raises(weights.WeightsError, match="has no metadata.json"):
    weights.load_pretrained(d)
  d = tmp_path / "noparams"
  shutil.copytree(saved_small, d)
  shutil.rmtree(d / "params")
  with pytest.raises(weights.WeightsError, match="has no params/"):
    weights.load_pretrained(d)
