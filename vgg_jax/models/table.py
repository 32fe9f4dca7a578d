"""Paper Table 1 (and the §4.1 shallow control, and AlexNet) as data.

Every net of the family is generated from the rows below; nothing else in the
code knows how many layers a net has.  A stage is a list of layers followed by
a 2x2/2 max-pool.  A layer is ``conv(k)`` (k x k convolution, "same" padding,
stride 1, then ReLU) or ``LRN`` (Krizhevsky's local response normalisation,
after the ReLU of the layer before it).
"""

from __future__ import annotations

import dataclasses

from vgg_jax.models import geometry

LRN = "LRN"

# Channel widths of the five stages: 64 -> 128 -> 256 -> 512 -> 512.
VGG_STAGE_WIDTHS = (64, 128, 256, 512, 512)

# Kernel sizes of the conv layers in each of the five stages (paper Table 1).
VGG_TABLE: dict[str, tuple[tuple, ...]] = {
    "A": ((3,), (3,), (3, 3), (3, 3), (3, 3)),
    "A-LRN": ((3, LRN), (3,), (3, 3), (3, 3), (3, 3)),
    "B": ((3, 3), (3, 3), (3, 3), (3, 3), (3, 3)),
    "C": ((3, 3), (3, 3), (3, 3, 1), (3, 3, 1), (3, 3, 1)),
    "D": ((3, 3), (3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)),
    "E": ((3, 3), (3, 3), (3, 3, 3, 3), (3, 3, 3, 3), (3, 3, 3, 3)),
    # §4.1: B with each pair of 3x3 convs replaced by a single 5x5 conv.
    "B-shallow": ((5,), (5,), (5,), (5,), (5,)),
}

# torchvision's vgg*_bn: BatchNorm after every conv (before its ReLU).  Not in
# the paper; here so that users can load those published weights.
BN_VARIANTS = {"A-BN": "A", "B-BN": "B", "D-BN": "D", "E-BN": "E"}

# Names users know the nets by.
ALIASES = {
    "vgg11": "A", "vgg11_lrn": "A-LRN", "vgg13": "B", "vgg16": "D",
    "vgg19": "E", "vgg11_bn": "A-BN", "vgg13_bn": "B-BN", "vgg16_bn": "D-BN",
    "vgg19_bn": "E-BN", "a": "A", "a-lrn": "A-LRN", "a_lrn": "A-LRN",
    "b": "B", "c": "C", "d": "D", "e": "E", "b-shallow": "B-shallow",
    "b_shallow": "B-shallow",
}


@dataclasses.dataclass(frozen=True)
class ConvSpec:
  name: str  # e.g. "block3_conv2" (Keras' naming, 1-based)
  kernel: int
  features: int
  stride: int = 1
  padding: int | str = "SAME"
  lrn_after: bool = False  # LRN after this layer's ReLU
  pool_after: bool = False  # max-pool after this layer (and its LRN)


@dataclasses.dataclass(frozen=True)
class NetSpec:
  """A resolved net: its conv layers in order, its pooling, and its head."""

  name: str
  convs: tuple[ConvSpec, ...]
  pool_window: int = 2
  pool_stride: int = 2
  head_window: int = 7  # FC1 is a head_window x head_window VALID conv
  fc_width: int = 4096
  batch_norm: bool = False
  # Max-pool output size: "floor" (VALID; this code's training default) or
  # "ceil" (Caffe's, in which the released VGG weights were trained and
  # densely evaluated: a partial window at the bottom/right edge).
  pool_rounding: str = "floor"

  @property
  def weight_layers(self) -> int:
    return len(self.convs) + 3


def _scaled(width: int, width_mult: float) -> int:
  return max(1, int(round(width * width_mult)))


def canonical_name(name: str) -> str:
  """Resolve an alias ('vgg16', 'd') to its canonical name ('D')."""
  if name in VGG_TABLE or name in BN_VARIANTS or name == "alexnet":
    return name
  key = name.lower() if isinstance(name, str) else name
  if key in ALIASES:
    return ALIASES[key]
  if key == "alexnet":
    return "alexnet"
  raise ValueError(
      f"unknown model name {name!r}; expected one of {sorted(MODEL_NAMES)} "
      f"or an alias {sorted(ALIASES)}")


POOL_ROUNDINGS = ("floor", "ceil")


def net_spec(name: str, *, width_mult: float = 1.0, fc_width: int = 4096,
             head_window: int | None = None,
             pool_rounding: str = "floor") -> NetSpec:
  """The layer list of ``name`` with widths scaled by ``width_mult``."""
  if pool_rounding not in POOL_ROUNDINGS:
    raise ValueError(f"pool_rounding must be one of {POOL_ROUNDINGS} "
                     f"(\"ceil\" is Caffe's), got {pool_rounding!r}")
  return dataclasses.replace(
      _net_spec(name, width_mult=width_mult, fc_width=fc_width,
                head_window=head_window), pool_rounding=pool_rounding)


def _net_spec(name, *, width_mult, fc_width, head_window) -> NetSpec:
  name = canonical_name(name)
  if width_mult <= 0:
    raise ValueError(f"width_mult must be positive, got {width_mult}")
  if name == "alexnet":
    return _alexnet_spec(width_mult, fc_width,
                         6 if head_window is None else head_window)
  base = BN_VARIANTS.get(name, name)
  convs = []
  for s, (stage, width) in enumerate(zip(VGG_TABLE[base], VGG_STAGE_WIDTHS)):
    i = 0
    for layer in stage:
      if layer == LRN:
        convs[-1] = dataclasses.replace(convs[-1], lrn_after=True)
        continue
      i += 1
      convs.append(ConvSpec(f"block{s + 1}_conv{i}", layer,
                            _scaled(width, width_mult)))
    convs[-1] = dataclasses.replace(convs[-1], pool_after=True)
  return NetSpec(name=name, convs=tuple(convs),
                 head_window=7 if head_window is None else head_window,
                 fc_width=fc_width, batch_norm=name in BN_VARIANTS)


def _alexnet_spec(width_mult, fc_width, head_window) -> NetSpec:
  """Single-tower AlexNet (Krizhevsky et al. 2012; the baseline of paper §1 and §4.5).

  conv1 takes a 224 input with 2 pixels of padding (55x55 out, as in the
  paper's figure and torchvision); pools are 3x3 stride 2 ("overlapping").
  """
  w = lambda c: _scaled(c, width_mult)
  convs = (
      ConvSpec("conv1", 11, w(96), stride=4, padding=2, lrn_after=True,
               pool_after=True),
      ConvSpec("conv2", 5, w(256), lrn_after=True, pool_after=True),
      ConvSpec("conv3", 3, w(384)),
      ConvSpec("conv4", 3, w(384)),
      ConvSpec("conv5", 3, w(256), pool_after=True),
  )
  return NetSpec("alexnet", convs, pool_window=3, pool_stride=2,
                 head_window=head_window, fc_width=fc_width)


MODEL_NAMES = tuple(VGG_TABLE) + tuple(BN_VARIANTS) + ("alexnet",)
# The nets of the paper (Table 1 and the §4.1 control), in the paper's order.
PAPER_NETS = ("A", "A-LRN", "B", "C", "D", "E", "B-shallow")


def count_params(spec: NetSpec, in_channels: int = 3,
                 num_classes: int = 1000) -> int:
  """Weights and biases, from the layer list (BN adds scale and bias)."""
  total, c_in = 0, in_channels
  for c in spec.convs:
    total += c.kernel * c.kernel * c_in * c.features + c.features
    if spec.batch_norm:
      total += 2 * c.features
    c_in = c.features
  h = spec.head_window
  total += h * h * c_in * spec.fc_width + spec.fc_width
  total += spec.fc_width * spec.fc_width + spec.fc_width
  total += spec.fc_width * num_classes + num_classes
  return total


def count_macs(spec: NetSpec, image_size: int = 224, in_channels: int = 3,
               num_classes: int = 1000) -> int:
  """Multiply-accumulates of one forward pass (convs and FC layers only)."""
  total, c_in, size = 0, in_channels, image_size
  for c, conv_side, size in geometry.layer_sizes(spec, image_size):
    total += conv_side * conv_side * c.kernel * c.kernel * c_in * c.features
    c_in = c.features
  out = geometry.map_size(spec, image_size)
  if out < 1:
    raise ValueError(
        f"a {image_size}px input is too small for {spec.name}: the conv body "
        f"gives {size}x{size}, the head needs {spec.head_window}x"
        f"{spec.head_window}")
  per_position = (spec.head_window ** 2 * c_in * spec.fc_width
                  + spec.fc_width * spec.fc_width + spec.fc_width * num_classes)
  return total + out * out * per_position
