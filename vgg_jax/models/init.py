"""Initialisation schemes (paper §3.1) and the paper's surgery.

* ``paper``: weights N(0, 0.01^2), biases 0.  The paper says "variance 1e-2";
  Caffe's gaussian filler takes a standard deviation and every
  re-implementation uses std 0.01, so we do too (a documented choice).  This
  trains A; deeper nets need ``init_from_a`` (or Glorot/He).
* ``glorot``: Glorot & Bengio (2010) uniform, biases 0 (the paper's
  post-submission remark).
* ``he``: He et al. (2015) normal with fan-in, biases 0.
* ``alexnet``: N(0, 0.01^2); biases 1 in conv2, conv4, conv5 and the hidden
  FC layers, 0 elsewhere (Krizhevsky et al. 2012 §5).

The FC layers are stored as convolutions (FC1 as a 7x7 VALID conv).  Their
fans are computed as for the dense layers they are (fan-in 7*7*512, fan-out
4096), so Glorot/He give the same scale as on an FC layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.nn import initializers as jinit

INIT_SCHEMES = ("paper", "glorot", "he", "alexnet")
ALEXNET_ONE_BIAS = ("conv2", "conv4", "conv5", "fc1", "fc2")


def kernel_init(scheme: str, *, head: bool):
  """Kernel initialiser for a body conv (head=False) or an FC-as-conv."""
  axes = dict(in_axis=(0, 1, 2), out_axis=3) if head else {}
  if scheme in ("paper", "alexnet"):
    return jinit.normal(stddev=0.01)
  if scheme == "glorot":
    return jinit.variance_scaling(1.0, "fan_avg", "uniform", **axes)
  if scheme == "he":
    return jinit.variance_scaling(2.0, "fan_in", "normal", **axes)
  raise ValueError(f"unknown init scheme {scheme!r}; expected one of "
                   f"{INIT_SCHEMES}")


def bias_init(scheme: str, layer_name: str):
  if scheme == "alexnet" and layer_name in ALEXNET_ONE_BIAS:
    return jinit.ones
  return jinit.zeros


# The first four conv layers of net A, by name.  The paper copies "the first
# four convolutional layers" of A into the deeper nets; we copy each into the
# layer with the same name (block1_conv1, block2_conv1, block3_conv1,
# block3_conv2), which is where they have the same shape and the same place
# in the pyramid (a documented choice: the paper does not say which).
A_PRETRAINED_CONVS = ("block1_conv1", "block2_conv1", "block3_conv1",
                      "block3_conv2")
HEAD_LAYERS = ("fc1", "fc2", "fc3")


def init_from_a(deep_model, a_model) -> list[str]:
  """The paper's surgery: copy A's first four convs and its three FC layers.

  ``deep_model`` (B, C, D or E) is modified in place; its other layers keep
  their fresh random initialisation.  Returns the names of the copied layers.
  Shapes must agree (same width multiplier, head and number of classes).
  """
  copied = []
  for name in A_PRETRAINED_CONVS + HEAD_LAYERS:
    src, dst = getattr(a_model, name, None), getattr(deep_model, name, None)
    if src is None or dst is None:
      raise ValueError(
          f"cannot copy layer {name!r}: the source must be net A and the "
          f"target a VGG net that has it")
    for attr in ("kernel", "bias"):
      s, d = getattr(src, attr), getattr(dst, attr)
      if s.shape != d.shape:
        raise ValueError(
            f"layer {name}.{attr}: net A has shape {s.shape}, the "
            f"target has {d.shape}; build both with the same "
            "width_mult, head_window and num_classes")
      d[...] = jnp.asarray(s[...], d.dtype)
    copied.append(name)
  return copied
