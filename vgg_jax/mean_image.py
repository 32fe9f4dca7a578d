"""Krizhevsky et al.'s per-pixel mean image (the AlexNet baseline, paper §4.5).

AlexNet subtracts from every input "the mean activity over the training set
from each pixel": a 256x256x3 image, the mean of the training images
rescaled so the shorter side is 256 and cropped to the central 256x256
square (``python -m vgg_jax.data stats --mean_image FILE`` computes it).
A training crop at (top, left) of that square, flipped or not, subtracts
the same window of the mean image, flipped with it (Caffe's AlexNet: crop of
image minus crop of mean); so do the test views (centre, the 10 patches).
The VGG paper itself subtracts only the mean RGB (§2.1).

One rule gives the mean under *any* view, so that views which are not a
window of the central square (a crop outside it, a different scale, the
dense protocol's whole image) are defined too.  The **mean canvas** of an
image rescaled to shape (H, W) with shorter side s = min(H, W):

- the mean image resized to s x s (OpenCV, as ``preprocess.
  rescale_shorter_side``; unchanged when s = 256) lies over the central
  s x s square, placed exactly as ``preprocess.center_crop`` places it;
- outside that square (the long side's margins) its border pixels are
  replicated outwards (the mean image is smooth: its edge is the best guess
  of the mean just beyond it).

A view's mean is the same view cut from the mean canvas
(``preprocess.protocol_views`` on the canvas, so the windows are cut by the
code that cuts the image's).  For AlexNet's own inputs (S = Q = 256, crops
of the central square) this is exactly the window of the stored mean image.

The file: a ``.npy`` float32 array (256, 256, 3), RGB 0-255 units.
"""

from __future__ import annotations

import functools
import os
import pathlib

import numpy as np

from vgg_jax import files
from vgg_jax import preprocess

SIDE = 256  # Krizhevsky et al.: images rescaled to 256, central 256 square
SHAPE = (SIDE, SIDE, 3)


class MeanImageError(ValueError):
  """A mean-image file that is missing or not a (256, 256, 3) image."""


def compute_command(path) -> str:
  return (f"python -m vgg_jax.data stats --source tfds --name imagenet2012 "
          f"--data_dir DIR --mean_image {path}")


def check(mean: np.ndarray, what: str = "mean image") -> np.ndarray:
  """``mean`` as float32 (256, 256, 3), or a MeanImageError saying why not."""
  mean = np.asarray(mean)
  if mean.shape != SHAPE:
    raise MeanImageError(
        f"{what} has shape {mean.shape}; expected {SHAPE} (the per-pixel "
        "mean of the training images rescaled to 256 and cropped to the "
        f"central 256x256 square, RGB 0-255).  Recompute it: "
        f"{compute_command('FILE.npy')}")
  if not np.issubdtype(mean.dtype, np.floating) and not np.issubdtype(
      mean.dtype, np.integer):
    raise MeanImageError(f"{what} has dtype {mean.dtype}; expected float32")
  mean = mean.astype(np.float32)
  if not np.all(np.isfinite(mean)) or mean.min() < 0 or mean.max() > 255:
    raise MeanImageError(
        f"{what} holds values outside [0, 255] (or NaN): expected RGB 0-255 "
        "pixel means")
  return mean


def save(path, mean: np.ndarray) -> pathlib.Path:
  """Writes ``mean`` (checked) atomically as a .npy file."""
  mean = check(mean)
  return files.atomic_write(path, lambda f: np.save(f, mean,
                                                    allow_pickle=False))


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
  del mtime_ns, size  # part of the cache key: a rewritten file is re-read
  try:
    mean = np.load(path, allow_pickle=False)
  except (ValueError, OSError) as e:
    raise MeanImageError(f"{path} is not a .npy array ({e}); expected the "
                         f"mean image written by `{compute_command(path)}`"
                         ) from e
  mean = check(mean, f"mean image {path}")
  mean.setflags(write=False)
  return mean


def load(path) -> np.ndarray:
  """The mean image in ``path`` as read-only float32 (256, 256, 3)."""
  path = os.path.abspath(os.fspath(path))
  try:
    st = os.stat(path)
  except FileNotFoundError:
    raise MeanImageError(
        f"no mean image at {path}; compute it with `{compute_command(path)}` "
        "(or set data.mean_image to where it is, or to '' for the "
        "per-channel mean)") from None
  return _load_cached(path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=32)
def _at_side(path: str, side: int) -> np.ndarray:
  mean = load(path)
  out = mean if side == SIDE else preprocess.rescale_shorter_side(mean, side)
  out = np.ascontiguousarray(out, np.float32)
  out.setflags(write=False)
  return out


def window(path, shape, top: int, left: int, height: int, width: int,
           flip: bool = False) -> np.ndarray:
  """float32 (height, width, 3): rows [top, top + height) and columns
  [left, left + width) of the mean canvas (module doc) of an image of
  ``shape`` (H, W, ...), mirrored left-right if ``flip``."""
  h, w = int(shape[0]), int(shape[1])
  s = min(h, w)
  sq = _at_side(os.path.abspath(os.fspath(path)), s)
  t0, l0 = (h - s) // 2, (w - s) // 2  # as preprocess.center_crop places it
  y, x = top - t0, left - l0
  if 0 <= y and y + height <= s and 0 <= x and x + width <= s:
    # Inside the square (every AlexNet view): a read-only view (a copy if
    # flipped, by cv2); a fancy-index gather is far slower per training crop.
    out = sq[y:y + height, x:x + width]
    return preprocess.horizontal_flip(out) if flip else out  # cv2: fast
  rows = np.clip(np.arange(y, y + height), 0, s - 1)
  cols = np.clip(np.arange(x, x + width), 0, s - 1)
  if flip:
    cols = cols[::-1]
  return np.take(np.take(sq, rows, axis=0), cols, axis=1)


def canvas(path, shape) -> np.ndarray:
  """The whole mean canvas of an image of ``shape``: float32 (H, W, 3)."""
  return window(path, shape, 0, 0, int(shape[0]), int(shape[1]))


def views(path, shape, protocol: str, crop: int, grid: int = 5, *,
          flips: bool) -> np.ndarray:
  """The mean under each view ``preprocess.protocol_views`` cuts of an
  image of ``shape``: the same views cut from its mean canvas."""
  return preprocess.protocol_views(canvas(path, shape), protocol, crop, grid,
                                   flips=flips)
