"""Mean RGB, RGB-covariance PCA and the per-pixel mean image of a training
split (paper section 3.1; Krizhevsky et al.'s mean image for the AlexNet
baseline of §4.5).

The paper subtracts "the mean RGB value, computed on the training set";
the colour shift (Krizhevsky et al. 2012) needs the eigenvalues and
eigenvectors of the 3x3 covariance of RGB pixel values over the training
set.  Conventions, matching ``conventions.py`` and ``data_cfg``:
mean in 0-255 units; eigenvalues of the covariance of values on the 0-1
scale, sorted descending; eigenvectors as columns (sign arbitrary: alpha is
symmetric; we make each column's largest component positive).
Covariance is the population covariance over all pixels of all images.
Grey sources (one channel, e.g. Fashion-MNIST) give ``mean`` and ``std``
(0-255) instead.

The mean image (``mean_image``): the per-pixel mean of the images rescaled
so that the shorter side is 256 and cropped to the central 256x256 square
(``vgg_jax/mean_image.py``), float64 sums, stored as float32 (256, 256, 3).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from vgg_jax import input_pipeline
from vgg_jax import mean_image as mean_image_lib
from vgg_jax import preprocess
from vgg_jax import progress as progress_lib


class PixelMoments:
  """Streaming exact sums over every pixel of every image (float64)."""

  def __init__(self):
    self.channels = None
    self.n = 0
    self.count = 0
    self.total = None
    self.outer = None

  def add(self, img: np.ndarray) -> None:
    img = np.asarray(img)
    c = img.shape[-1] if img.ndim == 3 else 1
    if self.channels is None:
      self.channels = c
      self.total = np.zeros(c, np.float64)
      self.outer = np.zeros((c, c), np.float64)
    elif c != self.channels:
      raise ValueError(f"an image with {c} channels among images with "
                       f"{self.channels}")
    x = img.astype(np.float64).reshape(-1, c)
    self.n += x.shape[0]
    self.total += x.sum(0)
    self.outer += x.T @ x
    self.count += 1

  def result(self) -> dict:
    if self.n == 0:
      raise ValueError("no decodable images: cannot compute statistics")
    mean = self.total / self.n
    cov = self.outer / self.n - np.outer(mean, mean)
    if self.channels == 1:
      return {"mean": float(mean[0]), "std": float(np.sqrt(max(cov[0, 0], 0))),
              "num_images": self.count, "num_pixels": int(self.n)}
    eigval, eigvec = np.linalg.eigh(cov / 255.0**2)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = eigval[order], eigvec[:, order]
    signs = np.sign(eigvec[np.argmax(np.abs(eigvec), axis=0), np.arange(3)])
    eigvec = eigvec * signs
    return {"mean_rgb": [float(v) for v in mean],
            "pca_eigval": [float(v) for v in eigval],
            "pca_eigvec": [[float(v) for v in row] for row in eigvec],
            "num_images": self.count, "num_pixels": int(self.n)}


def pixel_stats(images: Iterable[np.ndarray]) -> dict:
  """Exact mean / covariance eigen-decomposition over all pixels.

  ``images``: uint8 (H, W, 3) RGB arrays (or (H, W, 1) grey: mean and
  std).  Sums in float64.
  """
  moments = PixelMoments()
  for img in images:
    moments.add(img)
  return moments.result()


class MeanImageSum:
  """Streaming per-pixel mean of the central 256x256 squares of images
  rescaled to shorter side 256 (float64 accumulator)."""

  def __init__(self, side: int = mean_image_lib.SIDE):
    self.side = int(side)
    self.total = np.zeros((self.side, self.side, 3), np.float64)
    self.count = 0

  def add(self, img: np.ndarray) -> None:
    if img.ndim != 3 or img.shape[2] != 3:
      raise ValueError(f"the mean image needs RGB images, got shape "
                       f"{img.shape}")
    img = preprocess.rescale_shorter_side(img, self.side)
    self.total += preprocess.center_crop(img, self.side)
    self.count += 1

  def result(self) -> np.ndarray:
    if self.count == 0:
      raise ValueError("no decodable images: cannot compute a mean image")
    return (self.total / self.count).astype(np.float32)


def compute_stats(data_cfg, *, split: str | None = None,
                  max_images: int | None = None, side: int | None = None,
                  seed: int = 0, mean_image: str | None = None,
                  show_progress: bool = False) -> dict:
  """Statistics of ``split`` (default the training split) of ``data_cfg``.

  ``max_images``: a seeded random subset (all if None).  ``side``: rescale
  each image so its shorter side is ``side`` first (None: raw pixels).
  ``mean_image``: also compute the per-pixel mean image (from the same
  decoded images) and write it there (.npy, atomically).
  Every image is read once; undecodable images are counted
  (``num_skipped``) and named (``skipped``: each one's name and reason).
  """
  split = split or data_cfg.train_split
  kind = input_pipeline.get_source(data_cfg.source)
  if mean_image and not kind.supports_mean_image:
    raise ValueError(
        f"--mean_image: data source {data_cfg.source!r} has no per-pixel "
        "mean image (it needs RGB images rescaled to 256; the tfds and "
        "folder sources have them)")
  source = kind.image_source(data_cfg, split)
  indices = np.arange(len(source))
  if max_images is not None and max_images < len(source):
    indices = np.sort(np.random.default_rng(seed).choice(
        len(source), size=max_images, replace=False))
  moments = PixelMoments()
  mean_sum = MeanImageSum() if mean_image else None
  skipped = []
  bar = progress_lib.Progress(len(indices), desc="stats", unit="images",
                              tty=None if show_progress else False,
                              log_every_s=30.0 if show_progress else 1e9)
  for i in indices:
    try:
      img, _, _ = source.get(int(i), min_side=side)
    except preprocess.DecodeError as e:
      skipped.append(str(e))  # the readers put the image's name in it
      bar.update(1)
      continue
    if mean_sum is not None:
      mean_sum.add(img)
    moments.add(preprocess.rescale_shorter_side(img, side) if side else img)
    bar.update(1)
  bar.close()
  out = moments.result()
  out["num_skipped"] = len(skipped)
  out["skipped"] = skipped
  if mean_sum is not None:
    mean = mean_sum.result()
    path = mean_image_lib.save(mean_image, mean)
    out["mean_image"] = str(path.resolve())
    out["mean_image_num_images"] = mean_sum.count
    out["mean_image_mean_rgb"] = [float(v) for v in
                                  mean.astype(np.float64).mean((0, 1))]
  return out
