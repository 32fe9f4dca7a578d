"""Mean RGB and RGB-covariance PCA of a training split (paper section 3.1).

The paper subtracts "the mean RGB value, computed on the training set"; the
colour shift (Krizhevsky et al. 2012) needs the eigenvalues and
eigenvectors of the 3x3 covariance of RGB pixel values over the training
set.  Conventions, matching ``conventions.py`` and ``data_cfg``:
mean in 0-255 units; eigenvalues of the covariance of values on the 0-1
scale, sorted descending; eigenvectors as columns (sign arbitrary: alpha is
symmetric; we make each column's largest component positive).
Covariance is the population covariance over all pixels of all images.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from vgg_jax import input_pipeline
from vgg_jax import preprocess


def pixel_stats(images: Iterable[np.ndarray]) -> dict:
  """Exact mean / covariance eigen-decomposition over all pixels.

  ``images``: uint8 (H, W, 3) RGB arrays.  Sums in float64.
  """
  n = 0
  total = np.zeros(3, np.float64)
  outer = np.zeros((3, 3), np.float64)
  count = 0
  for img in images:
    x = np.asarray(img, np.float64).reshape(-1, 3)
    n += x.shape[0]
    total += x.sum(0)
    outer += x.T @ x
    count += 1
  if n == 0:
    raise ValueError("no decodable images: cannot compute statistics")
  mean = total / n
  cov = outer / n - np.outer(mean, mean)
  eigval, eigvec = np.linalg.eigh(cov / 255.0**2)
  order = np.argsort(eigval)[::-1]
  eigval, eigvec = eigval[order], eigvec[:, order]
  signs = np.sign(eigvec[np.argmax(np.abs(eigvec), axis=0), np.arange(3)])
  eigvec = eigvec * signs
  return {"mean_rgb": [float(v) for v in mean],
          "pca_eigval": [float(v) for v in eigval],
          "pca_eigvec": [[float(v) for v in row] for row in eigvec],
          "num_images": count, "num_pixels": int(n)}


def compute_stats(data_cfg, *, split: str | None = None,
                  max_images: int | None = None, side: int | None = None,
                  seed: int = 0) -> dict:
  """Statistics of ``split`` (default the training split) of ``data_cfg``.

  ``max_images``: a seeded random subset (all if None).  ``side``: rescale
  each image so its shorter side is ``side`` first (None: raw pixels).
  Undecodable images are skipped and counted (``num_skipped``).
  Fashion-MNIST (grey) gives ``mean`` and ``std`` (0-255) instead.
  """
  split = split or data_cfg.train_split
  if data_cfg.source == "fashion_mnist":
    images, _ = input_pipeline.fashion_mnist_split(data_cfg, split)
    x = images.astype(np.float64)
    return {"mean": float(x.mean()), "std": float(x.std()),
            "num_images": int(len(images))}
  source = input_pipeline.image_source(data_cfg, split)
  indices = np.arange(len(source))
  if max_images is not None and max_images < len(source):
    indices = np.sort(np.random.default_rng(seed).choice(
        len(source), size=max_images, replace=False))
  skipped = []

  def images():
    for i in indices:
      try:
        img, _, _ = source.get(int(i), min_side=side)
      except preprocess.DecodeError as e:
        skipped.append(str(e))
        continue
      yield preprocess.rescale_shorter_side(img, side) if side else img

  out = pixel_stats(images())
  out["num_skipped"] = len(skipped)
  out["skipped"] = skipped[:100]
  return out
