"""Converters: published VGG weight layouts -> our flat {"layer/var": array}.

Keras' Caffe-converted VGG16/VGG19 ``.h5`` files and torchvision's state
dicts (any of vgg11/13/16/19 with or without BatchNorm, any width). The net
is read off the tensors (or insisted on with ``model=``), every tensor is
checked against it, and a mismatch names what was expected and found.

The FC1 flattening order is the classic silent bug: Keras flattens an NHWC
map, so its fc1 rows are in (H, W, C) order; torchvision flattens NCHW, so
``classifier.0.weight`` has its inputs in (C, H, W) order. Both become the
7x7 VALID conv kernel (H, W, C, out) of our head (paper §3.2: the FC layers
are applied as convolutions).
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from vgg_jax.weights.errors import WeightsError, short_list
from vgg_jax.weights.tensors import (check_float_dtypes, compare_shapes,
                                     expected_tensors)

# Nets a torchvision- or Keras-style VGG file can hold: every VGG of the
# table except A-LRN (its LRN shifts torchvision's module indices and no
# published file has it).
IMPORTABLE = ("A", "B", "C", "D", "E", "B-shallow", "A-BN", "B-BN", "D-BN",
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


def resolve_name(model: str | None) -> str | None:
  if model is None:
    return None
  from vgg_jax.models import canonical_name
  name = canonical_name(model)  # raises on an unknown name
  if name not in IMPORTABLE:
    raise WeightsError(f"cannot import {model!r} ({name}); importable nets: "
                       f"{', '.join(IMPORTABLE)}")
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
      compare_shapes(expected, found, f"{what} (read as {name})")
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
  shapes = expected_tensors(dict(model_kwargs, name=spec.name))
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
          f"(found: {short_list(sorted(state))})")
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
  requested = resolve_name(model)
  # BatchNorm's step counter is not a weight, and torchvision's hosted
  # vgg*_bn files predate it (PyTorch 0.4.1): drop it where it sits beside
  # a BN layer's running mean; anywhere else it is an unexpected tensor.
  state = {k: v for k, v in state.items() if not (
      k.endswith(".num_batches_tracked") and
      k[:-len("num_batches_tracked")] + "running_mean" in state)}
  check_float_dtypes(state, what)
  kwargs = _torch_model_kwargs(state, what)
  name = _pick_net(
      IMPORTABLE,
      lambda n: _expected_torch_shapes(_spec_for(n, kwargs), kwargs),
      state, requested, f"the tensors of {what}")
  # torchvision's nn.MaxPool2d rounds down (ceil_mode=False), as ours does
  # by default: recorded so evaluation pools as the weights were trained.
  kwargs = dict(name=name, **kwargs, pool_rounding="floor")
  ours = {}
  for key, (path, role) in _torch_layout(_spec_for(name, kwargs)).items():
    if role == "ignore":
      continue
    w = np.asarray(state[key])
    if role == "conv":  # OIHW -> HWIO
      w = w.transpose(2, 3, 1, 0)
    elif role == "fc1":
      # (out, C*h*h) with inputs in (C, H, W) order (NCHW flatten) ->
      # (out, C, h, h) -> (h, h, C, out).  The silent bug (module docstring).
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
            f"entries {short_list(list(root))}")
  except (OSError, KeyError, RuntimeError) as e:
    raise WeightsError(f"{path}: cannot read a weight tensor (truncated "
                       f"file?): {type(e).__name__}: {e}") from e
  return layers


def convert_keras(layers: Mapping[str, list[np.ndarray]], *,
                  model: str | None = None, what: str = "Keras weights"):
  """Keras VGG16/VGG19 layers -> (model kwargs, our flat weights)."""
  requested = resolve_name(model)
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
    raise WeightsError(
        f"{what}: missing layers {missing_head} (found "
        f"{short_list(list(layers))}); expected the layers of Keras' VGG16 "
        "or VGG19 (block1_conv1 ... block5_convN, fc1, fc2, predictions), as "
        "in vgg16/vgg19_weights_tf_dim_ordering_tf_kernels.h5")
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
  check_float_dtypes(flat, what)
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
    return expected_tensors(dict(kwargs, name=name))
  name = _pick_net([n for n in IMPORTABLE if not n.endswith("-BN")],
                   expected, ours, requested, f"the layers of {what}")
  # Keras' VGG files are the authors' Caffe weights, trained and densely
  # evaluated with Caffe's ceil pooling: evaluation uses the same.
  return dict(name=name, **kwargs, pool_rounding="ceil"), ours
