"""The VGG family (paper §2, Table 1) and single-tower AlexNet as NNX modules.

One parameterisation of the head serves training and dense evaluation
(paper §3.2): FC1 is stored as a ``head_window`` x ``head_window`` VALID
convolution (7x7 for 224 inputs), FC2 and FC3 as 1x1 convolutions.  On a
224x224 image the conv body gives 7x7x512, FC1 reduces it to 1x1 and the net
is exactly the paper's FC net; on a larger image the same weights slide over
the feature map and give a class score map (the "fully-convolutional net").

Pooling uses floor arithmetic by default (VALID 2x2/2): an input of side H
gives a score map of side floor(H/32) - 6.  Caffe's pooling rounds up
(``pool_rounding="ceil"``, models/geometry.py): the two agree on sides that are
multiples of 32 (224, and the short side at Q when Q is one), not on the long side
of most test images, whose aspect ratio is arbitrary.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vgg_jax.models import conv as conv_lib
from vgg_jax.models import conv_autotune
from vgg_jax.models import geometry
from vgg_jax.models import heads as heads_lib
from vgg_jax.models import init as init_lib
from vgg_jax.models.lrn import local_response_norm
from vgg_jax.models.table import NetSpec


def max_pool(x: jax.Array, window: int, stride: int,
             rounding: str = "floor") -> jax.Array:
  """Max-pool, VALID (floor), or Caffe's ceil rounding (``rounding="ceil"``).

  Ceil pads the bottom/right edge with -inf up to the last (partial)
  window, so its max is over the part inside the input, as in Caffe.

  Non-overlapping 2x2/2 pools (VGG's) are the elementwise max of four
  strided views: the same values, and a backward pass that is elementwise
  instead of XLA's select-and-scatter (~7x faster on CPUs); strided slices
  keep the batch axis's sharding under any mesh.  Other pools (AlexNet's
  overlapping 3x3/2) use reduce_window.
  """
  if rounding == "ceil":
    pad = [(geometry.pooled_side(n, window, stride, "ceil") - 1) * stride
           + window - n for n in x.shape[1:3]]
    x = jnp.pad(x, ((0, 0), (0, max(pad[0], 0)), (0, max(pad[1], 0)),
                    (0, 0)), constant_values=-jnp.inf)
  if not window == stride == 2:
    return nnx.max_pool(x, (window, window), strides=(stride, stride),
                        padding="VALID")
  h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
  view = lambda i, j: x[:, i:h:2, j:w:2]
  return jnp.maximum(jnp.maximum(view(0, 0), view(0, 1)),
                     jnp.maximum(view(1, 0), view(1, 1)))


class VGG(nnx.Module):
  """A net of the family; layers are attributes named as in Keras' VGG.

  Conv layers are ``block{stage}_conv{i}`` (``conv1``..``conv5`` for
  AlexNet), BatchNorm layers (``*-BN`` nets) ``block{stage}_bn{i}``, and the
  head ``fc1``, ``fc2``, ``fc3``.
  """

  def __init__(self, spec: NetSpec, *, num_classes: int = 1000,
               in_channels: int = 3, init: str = "paper",
               dtype: Any = None, param_dtype: Any = jnp.float32,
               dropout_rate: float = 0.5, conv_impl: str = "auto",
               rngs: nnx.Rngs):
    if init not in init_lib.INIT_SCHEMES:
      raise ValueError(f"unknown init scheme {init!r}; expected one of "
                       f"{init_lib.INIT_SCHEMES}")
    self.spec = spec
    self.num_classes = num_classes
    self.in_channels = in_channels
    self.dtype = dtype
    # Same weights and numbers whichever schedule; see models/conv.py for
    # why CPUs get matrix-product schedules, chosen per layer shape by
    # timing ("autotune", models/conv_autotune.py).
    self.conv_impl = conv_lib.resolve_conv_impl(conv_impl)
    conv_fn = (conv_autotune.conv_general_dilated
               if self.conv_impl == "autotune"
               else conv_lib.schedule(self.conv_impl))
    c_in = in_channels
    for c in spec.convs:
      padding = c.padding if isinstance(c.padding, str) else (
          (c.padding, c.padding), (c.padding, c.padding))
      setattr(self, c.name, nnx.Conv(
          c_in, c.features, (c.kernel, c.kernel), strides=c.stride,
          padding=padding, dtype=dtype, param_dtype=param_dtype,
          kernel_init=init_lib.kernel_init(init, head=False),
          bias_init=init_lib.bias_init(init, c.name),
          conv_general_dilated=conv_fn, rngs=rngs))
      if spec.batch_norm:
        # torchvision's BatchNorm2d: momentum 0.1 (0.9 here), eps 1e-5.
        setattr(self, self.bn_name(c.name), nnx.BatchNorm(
            c.features, momentum=0.9, epsilon=1e-5, dtype=dtype,
            param_dtype=param_dtype, rngs=rngs))
      c_in = c.features
    h, fc = spec.head_window, spec.fc_width
    for name, fin, fout, k in (("fc1", c_in, fc, h), ("fc2", fc, fc, 1)):
      setattr(self, name, nnx.Conv(
          fin, fout, (k, k), padding="VALID", dtype=dtype,
          param_dtype=param_dtype,
          kernel_init=init_lib.kernel_init(init, head=True),
          bias_init=init_lib.bias_init(init, name),
          conv_general_dilated=conv_fn, rngs=rngs))
    # The head (FC3) is a module of its own: Appendix A swaps it for a box
    # head, Appendix B reads the FC2 map instead (models/heads.py).
    self.fc3 = heads_lib.ClassHead(fc, num_classes, init=init, name="fc3",
                                   dtype=dtype, param_dtype=param_dtype,
                                   conv_general_dilated=conv_fn, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate)

  @staticmethod
  def bn_name(conv_name: str) -> str:
    """The BatchNorm layer after conv ``conv_name`` (``*-BN`` nets)."""
    return conv_name.replace("conv", "bn")

  @property
  def conv_names(self) -> tuple[str, ...]:
    return tuple(c.name for c in self.spec.convs)

  @property
  def head(self) -> nnx.Module:
    """The last layer (FC3 for classification; models/heads.py)."""
    return self.fc3

  def features(self, x: jax.Array, *, train: bool = False,
               valid_hw: jax.Array | None = None):
    """The conv body: NHWC image -> NHWC feature map (side / 32 for VGG).

    ``valid_hw`` (N, 2) int: image n occupies only the top-left
    ``valid_hw[n]`` corner of a shared canvas (dense evaluation of images of
    different sizes in one batch, paper §3.2).  Then everything outside each
    image's valid region is re-zeroed before every convolution (exactly the
    zeros the convolution's own "SAME" padding sees on the image alone), the
    valid size is tracked through every conv and pool (models/geometry.py),
    and the result is ``(features, valid_hw_out)``: each valid position
    equals the image evaluated alone at its exact size.  Without
    ``valid_hw`` the result is the feature map alone.
    """
    if x.ndim != 4 or x.shape[-1] != self.in_channels:
      raise ValueError(
          f"expected an NHWC batch with {self.in_channels} channels, got "
          f"shape {x.shape}")
    if self.dtype is not None:
      x = x.astype(self.dtype)
    masked = valid_hw is not None
    if masked:
      h, w = valid_hw[:, 0], valid_hw[:, 1]
    for c in self.spec.convs:
      if masked:
        x = zero_outside(x, h, w)
      x = getattr(self, c.name)(x)
      if masked:
        h, w = geometry.conv_out(h, c), geometry.conv_out(w, c)
      if self.spec.batch_norm:
        x = getattr(self, self.bn_name(c.name))(
            x, use_running_average=not train)
      x = nnx.relu(x)
      if c.lrn_after:
        x = local_response_norm(x)
      if c.pool_after:
        if masked and self.spec.pool_rounding == "ceil":
          # A partial window at an image's edge must not see the canvas
          # beyond it: only its part inside counts (Caffe's ceil pooling).
          keep = valid_positions(x.shape[1:3], h, w)
          x = jnp.where(keep[..., None], x, jnp.array(-jnp.inf, x.dtype))
        x = max_pool(x, self.spec.pool_window, self.spec.pool_stride,
                     self.spec.pool_rounding)
        if masked:
          h, w = geometry.pool_out(h, self.spec), geometry.pool_out(w, self.spec)
          if self.spec.pool_rounding == "ceil":  # no -inf left for the head
            x = zero_outside(x, h, w)
    if masked:
      return x, jnp.stack([h, w], axis=1)
    return x

  def penultimate(self, x: jax.Array, *, train: bool = False,
                  rngs: nnx.Rngs | None = None,
                  valid_hw: jax.Array | None = None):
    """FC2's output after ReLU as a map (N, h, w, fc_width): Appendix B.

    With ``valid_hw`` (see ``features``) returns ``(map, valid_hw_out)``:
    FC1 is a VALID ``head_window`` conv, so valid outputs read only valid
    features; FC2 is 1x1.
    """
    f = self.features(x, train=train, valid_hw=valid_hw)
    if valid_hw is not None:
      f, hw = f
    if f.shape[1] < self.spec.head_window or f.shape[2] < self.spec.head_window:
      raise ValueError(
          f"input {x.shape[1]}x{x.shape[2]} is too small for {self.spec.name}:"
          f" the conv body gives {f.shape[1]}x{f.shape[2]}, FC1 needs "
          f"{self.spec.head_window}x{self.spec.head_window}")
    f = self.dropout(nnx.relu(self.fc1(f)), deterministic=not train, rngs=rngs)
    f = self.dropout(nnx.relu(self.fc2(f)), deterministic=not train,
                     rngs=rngs)
    if valid_hw is not None:
      return f, hw - self.spec.head_window + 1
    return f

  def output_map(self, x: jax.Array, *, head: nnx.Module | None = None,
                 train: bool = False, rngs: nnx.Rngs | None = None,
                 valid_hw: jax.Array | None = None):
    """``head`` (default: the model's own, FC3) on the FC2 map.

    The seam for other heads (a box head, Appendix A; the descriptor,
    Appendix B).  With ``valid_hw`` returns ``(map, valid_hw_out)``.
    """
    head = self.head if head is None else head
    out = self.penultimate(x, train=train, rngs=rngs, valid_hw=valid_hw)
    if valid_hw is not None:
      return head(out[0]), out[1]
    return head(out)

  def score_map(self, x: jax.Array, *, train: bool = False,
                rngs: nnx.Rngs | None = None,
                valid_hw: jax.Array | None = None):
    """Class score map (N, h, w, num_classes), h = floor(H/32) - 6 for VGG
    (ceil(H/32) - 6 with Caffe's pooling)."""
    return self.output_map(x, train=train, rngs=rngs, valid_hw=valid_hw)

  def __call__(self, x: jax.Array, *, train: bool = False,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """Logits (N, num_classes): the score map averaged over positions.

    On a training-size crop the map is 1x1, so this is the paper's FC net.
    ``train=True`` turns on dropout (needs ``rngs`` with a 'dropout' stream)
    and BatchNorm's batch statistics.
    """
    return self.score_map(x, train=train, rngs=rngs).mean(
        axis=(1, 2)).astype(jnp.float32)


def zero_outside(x: jax.Array, h: jax.Array, w: jax.Array) -> jax.Array:
  """Zeroes x[n, i, j] for i >= h[n] or j >= w[n]."""
  keep = valid_positions(x.shape[1:3], h, w)
  return jnp.where(keep[..., None], x, jnp.zeros((), x.dtype))


def valid_positions(shape_hw, h: jax.Array, w: jax.Array) -> jax.Array:
  """(N, H, W) bool: position (i, j) lies within image n's (h[n], w[n])."""
  rows = jnp.arange(shape_hw[0])[None, :] < h[:, None]
  cols = jnp.arange(shape_hw[1])[None, :] < w[:, None]
  return rows[:, :, None] & cols[:, None, :]
