"""Where a net's outputs sit on its input: the one copy of the size arithmetic.

Every conv/pool size, the score-map size, the stride between score-map
positions and the window each position sees are computed here and nowhere
else (the model's masked application, MAC counting, loaders checking a crop
size, heat maps, and Appendix A's box placement all call these).  The
functions take Python ints or integer jnp arrays alike (floor division),
so the same code tracks per-image valid sizes inside a jitted function.

Pooling is VALID (floor), as in ``models/vgg.py``: an input of side H gives
a VGG score map of side floor(H/32) - 6 (paper §3.2: the fully-convolutional
net on the rescaled image).
"""

from __future__ import annotations

from typing import Iterator


def conv_out(size, conv):
  """Output side of one conv layer (``table.ConvSpec``) for a ``size`` input."""
  if conv.stride != 1 or conv.padding != "SAME":
    return (size + 2 * conv.padding - conv.kernel) // conv.stride + 1
  return size


def pool_out(size, spec):
  """Output side of the net's max-pool (VALID, floor)."""
  return (size - spec.pool_window) // spec.pool_stride + 1


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
