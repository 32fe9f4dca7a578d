"""Where a net's outputs sit on its input: the one copy of the size arithmetic.

Every conv/pool size, the score-map size, the stride between score-map
positions and the window each position sees are computed here and nowhere
else (the model's masked application, MAC counting, loaders checking a crop
size, heat maps, and Appendix A's box placement all call these).  The
functions take Python ints or integer jnp arrays alike (floor division),
so the same code tracks per-image valid sizes inside a jitted function.

Pooling rounds down by default (VALID): an input of side H gives a VGG
score map of side floor(H/32) - 6 (paper §3.2: the fully-convolutional net
on the rescaled image).  ``pool_rounding="ceil"`` is Caffe's pooling, in
which the released VGG weights were trained and densely evaluated: the
output side is ceil((H - k) / s) + 1, the last window hanging over the
edge (the max is over its part inside); at H = 224 both agree, at most
dense test sizes they do not.
"""

from __future__ import annotations

from typing import Iterator


def conv_out(size, conv):
  """Output side of one conv layer (``table.ConvSpec``) for a ``size`` input."""
  if conv.stride != 1 or conv.padding != "SAME":
    return (size + 2 * conv.padding - conv.kernel) // conv.stride + 1
  return size


def pooled_side(size, window: int, stride: int, rounding: str = "floor"):
  """Output side of a ``window``/``stride`` max-pool over ``size`` inputs:
  floor((size - window) / stride) + 1, or with ``rounding="ceil"`` (Caffe)
  ceil((size - window) / stride) + 1.  (Caffe's extra rule, dropping a last
  window that starts in the padding, never applies: pools are unpadded and
  window >= stride.)"""
  if rounding == "ceil":
    return -((window - size) // stride) + 1  # ceil by negated floor
  if rounding != "floor":
    raise ValueError(f"pool rounding must be 'floor' or 'ceil', got "
                     f"{rounding!r}")
  return (size - window) // stride + 1


def pool_out(size, spec):
  """Output side of the net's max-pool (floor or ceil: ``spec.pool_rounding``)."""
  return pooled_side(size, spec.pool_window, spec.pool_stride,
                     spec.pool_rounding)


def layer_sizes(spec, size) -> Iterator[tuple]:
  """(conv, side after the conv, side after its pool) for each conv layer."""
  for c in spec.convs:
    size = conv_out(size, c)
    after = pool_out(size, spec) if c.pool_after else size
    yield c, size, after
    size = after


def output_size(spec, size):
  """Side of the conv body's output for a ``size`` input (floor)."""
  for _, _, size in layer_sizes(spec, size):
    pass
  return size


def map_size(spec, size):
  """Side of the head's output map (score map): FC1 is a VALID
  ``head_window`` conv, FC2/FC3 are 1x1."""
  return output_size(spec, size) - spec.head_window + 1


def map_stride(spec) -> int:
  """Input pixels between neighbouring map positions (32 for VGG)."""
  stride = 1
  for c in spec.convs:
    stride *= c.stride * (spec.pool_stride if c.pool_after else 1)
  return stride


def min_input_size(spec, limit: int = 4096) -> int:
  """The smallest input side whose map is 1x1: the training crop (224 for
  VGG with head_window 7, 32 with head_window 1)."""
  for s in range(1, limit):
    if map_size(spec, s) >= 1:
      return s
  raise ValueError(f"{spec.name}: no input up to {limit} px gives a map")
