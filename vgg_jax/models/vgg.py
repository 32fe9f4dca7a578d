"""The VGG family (paper §2, Table 1) and single-tower AlexNet as NNX modules.

One parameterisation of the head serves training and dense evaluation
(paper §3.2): FC1 is stored as a ``head_window`` x ``head_window`` VALID
convolution (7x7 for 224 inputs), FC2 and FC3 as 1x1 convolutions.  On a
224x224 image the conv body gives 7x7x512, FC1 reduces it to 1x1 and the net
is exactly the paper's FC net; on a larger image the same weights slide over
the feature map and give a class score map (the "fully-convolutional net").

Pooling uses floor arithmetic (VALID 2x2/2): an input of side H gives a score
map of side floor(H/32) - 6.  Caffe's pooling rounds up; the two agree only on
sides that are multiples of 32 (not the long side of most test images at Q).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vgg_jax.models import conv as conv_lib
from vgg_jax.models import init as init_lib
from vgg_jax.models.lrn import local_response_norm
from vgg_jax.models.table import NetSpec


def max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
  """Max-pool, VALID (floor).

  Non-overlapping 2x2/2 pools (VGG's) are the elementwise max of four
  strided views: the same values, and a backward pass that is elementwise
  instead of XLA's select-and-scatter (~7x faster on CPUs); strided slices
  keep the batch axis's sharding under any mesh.  Other pools (AlexNet's
  overlapping 3x3/2) use reduce_window.
  """
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
    # Same weights and numbers either way; see models/conv.py for why CPUs
    # get the patches-times-matrix schedule.
    self.conv_impl = conv_lib.resolve_conv_impl(conv_impl)
    conv_fn = (conv_lib.conv_general_dilated if self.conv_impl == "im2col"
               else jax.lax.conv_general_dilated)
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
        setattr(self, self._bn_name(c.name), nnx.BatchNorm(
            c.features, momentum=0.9, epsilon=1e-5, dtype=dtype,
            param_dtype=param_dtype, rngs=rngs))
      c_in = c.features
    h, fc = spec.head_window, spec.fc_width
    head = [("fc1", c_in, fc, h), ("fc2", fc, fc, 1),
            ("fc3", fc, num_classes, 1)]
    for name, fin, fout, k in head:
      setattr(self, name, nnx.Conv(
          fin, fout, (k, k), padding="VALID", dtype=dtype,
          param_dtype=param_dtype,
          kernel_init=init_lib.kernel_init(init, head=True),
          bias_init=init_lib.bias_init(init, name),
          conv_general_dilated=conv_fn, rngs=rngs))
    self.dropout = nnx.Dropout(dropout_rate)

  @staticmethod
  def _bn_name(conv_name: str) -> str:
    return conv_name.replace("conv", "bn")

  @property
  def conv_names(self) -> tuple[str, ...]:
    return tuple(c.name for c in self.spec.convs)

  def features(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """The conv body: NHWC image -> NHWC feature map (side / 32 for VGG)."""
    if x.ndim != 4 or x.shape[-1] != self.in_channels:
      raise ValueError(
          f"expected an NHWC batch with {self.in_channels} channels, got "
          f"shape {x.shape}")
    if self.dtype is not None:
      x = x.astype(self.dtype)
    for c in self.spec.convs:
      x = getattr(self, c.name)(x)
      if self.spec.batch_norm:
        x = getattr(self, self._bn_name(c.name))(
            x, use_running_average=not train)
      x = nnx.relu(x)
      if c.lrn_after:
        x = local_response_norm(x)
      if c.pool_after:
        x = max_pool(x, self.spec.pool_window, self.spec.pool_stride)
    return x

  def penultimate(self, x: jax.Array, *, train: bool = False,
                  rngs: nnx.Rngs | None = None) -> jax.Array:
    """FC2's output after ReLU as a map (N, h, w, fc_width): Appendix B."""
    f = self.features(x, train=train)
    if f.shape[1] < self.spec.head_window or f.shape[2] < self.spec.head_window:
      raise ValueError(
          f"input {x.shape[1]}x{x.shape[2]} is too small for {self.spec.name}:"
          f" the conv body gives {f.shape[1]}x{f.shape[2]}, FC1 needs "
          f"{self.spec.head_window}x{self.spec.head_window}")
    f = self.dropout(nnx.relu(self.fc1(f)), deterministic=not train, rngs=rngs)
    return self.dropout(nnx.relu(self.fc2(f)), deterministic=not train,
                        rngs=rngs)

  def score_map(self, x: jax.Array, *, train: bool = False,
                rngs: nnx.Rngs | None = None) -> jax.Array:
    """Class score map (N, h, w, num_classes), h = floor(H/32) - 6 for VGG."""
    return self.fc3(self.penultimate(x, train=train, rngs=rngs))

  def __call__(self, x: jax.Array, *, train: bool = False,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """Logits (N, num_classes): the score map averaged over positions.

    On a training-size crop the map is 1x1, so this is the paper's FC net.
    ``train=True`` turns on dropout (needs ``rngs`` with a 'dropout' stream)
    and BatchNorm's batch statistics.
    """
    return self.score_map(x, train=train, rngs=rngs).mean(
        axis=(1, 2)).astype(jnp.float32)
