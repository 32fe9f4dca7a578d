"""What a set of weights expects of its input (paper §2.1: minus the mean RGB).

The paper's only normalisation is subtracting the training-set mean RGB
(values 0-255).  Published weights differ: the Caffe release and Keras'
``vgg16/vgg19`` files want BGR, 0-255, minus the mean pixel; torchvision wants
RGB in [0, 1] normalised by a per-channel mean and std.  Every checkpoint and
imported weight file carries one of these so that preprocessing never depends
on the user remembering it.

``normalise`` is the single place where a decoded uint8 RGB image becomes the
float tensor a net sees:

    x = (to_order(rgb - mean_window) * scale - mean) / std

``mean_window`` is zero except for a convention with a per-pixel mean image
(``mean_image``: Krizhevsky et al.'s AlexNet input, paper §4.5's baseline;
see ``vgg_jax/mean_image.py``): then it is the window of the mean image
that the view covers, and ``mean`` is zero.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

# ILSVRC-2012 training-set statistics (paper §2.1, §3.1; the eigen-pairs are
# those Krizhevsky et al. 2012 published).  The paper subtracts
# the mean it computed; `python -m vgg_jax.data stats` recomputes both on the
# user's own training split.
IMAGENET_MEAN_RGB_255 = (123.68, 116.78, 103.94)
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
# Columns are the eigenvectors (RGB).
IMAGENET_PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


@dataclasses.dataclass(frozen=True)
class InputConvention:
  """Channel order, value scale, mean and std that a set of weights expects.

  ``mean`` and ``std`` are given in the *model's* channel order and in the
  value range after ``scale`` is applied.
  """

  channel_order: str = "RGB"  # "RGB" or "BGR"
  scale: float = 1.0  # multiply uint8 values (0-255) by this first
  mean: tuple[float, float, float] = IMAGENET_MEAN_RGB_255
  std: tuple[float, float, float] = (1.0, 1.0, 1.0)
  # A per-pixel mean image (.npy, RGB 0-255, absolute path) subtracted
  # before everything else; "" for none.  Which window of it a view
  # subtracts depends on where the view lies (vgg_jax/mean_image.py), so
  # the callers that cut views pass ``mean_window``.
  mean_image: str = ""

  def __post_init__(self):
    if self.channel_order not in ("RGB", "BGR"):
      raise ValueError(
          f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
    for field in ("mean", "std"):
      value = tuple(float(v) for v in getattr(self, field))
      if len(value) not in (1, 3):
        raise ValueError(f"{field} needs 1 or 3 values, got {value}")
      object.__setattr__(self, field, value)
    if any(s <= 0 for s in self.std):
      raise ValueError(f"std must be positive, got {self.std}")
    object.__setattr__(self, "mean_image", str(self.mean_image or ""))

  def check_mean_window(self, mean_window) -> None:
    """A clear error where a mean-image convention gets no mean window (a
    caller that does not know where its views lie must not silently skip
    the mean)."""
    if self.mean_image and mean_window is None:
      raise ValueError(
          f"this input convention subtracts the per-pixel mean image "
          f"{self.mean_image}: pass the window of it each view covers "
          "(vgg_jax.mean_image.window/views); this code path does not "
          "support mean-image models")

  def normalise(self, rgb_uint8: np.ndarray, mean_window=None) -> np.ndarray:
    """uint8 (or float 0-255) RGB image(s), channels last -> float32 input.

    ``mean_window``: the per-pixel mean under the view(s), RGB 0-255, same
    shape (required when ``mean_image`` is set, else optional)."""
    self.check_mean_window(mean_window)
    x = np.asarray(rgb_uint8, dtype=np.float32)
    if mean_window is not None:
      x = x - np.asarray(mean_window, np.float32)
    if self.channel_order == "BGR":
      x = x[..., ::-1]
    mean = np.asarray(self.mean, np.float32)
    std = np.asarray(self.std, np.float32)
    if x.shape[-1] != mean.shape[-1] and mean.shape[-1] != 1:
      raise ValueError(
          f"image has {x.shape[-1]} channels but the input convention has "
          f"{mean.shape[-1]} mean values")
    if self.scale != 1.0:
      x = x * np.float32(self.scale)
    return (x - mean) / std

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    if not d["mean_image"]:  # metadata without a mean image stays as it was
      del d["mean_image"]
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "InputConvention":
    missing = {"channel_order", "scale", "mean", "std"} - set(d)
    if missing:
      raise ValueError(
          f"input convention is missing {sorted(missing)}; expected keys "
          "channel_order, scale, mean, std (see vgg_jax/conventions.py)")
    return cls(channel_order=d["channel_order"], scale=float(d["scale"]),
               mean=tuple(d["mean"]), std=tuple(d["std"]),
               mean_image=d.get("mean_image") or "")

  def to_json(self) -> str:
    return json.dumps(self.to_dict())


# The paper's own convention: RGB, 0-255, minus the training-set mean.
PAPER = InputConvention("RGB", 1.0, IMAGENET_MEAN_RGB_255, (1.0, 1.0, 1.0))
# Caffe release and Keras vgg16/vgg19 .h5 files: BGR, 0-255, minus mean pixel.
CAFFE = InputConvention("BGR", 1.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0))
# torchvision: RGB in [0, 1], per-channel mean and std.
TORCHVISION = InputConvention("RGB", 1.0 / 255.0, (0.485, 0.456, 0.406),
                              (0.229, 0.224, 0.225))
