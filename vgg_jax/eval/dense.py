"""The dense engine: any per-image output of the net over whole images or
crops, in device batches (paper §3.2; Appendices A and B reuse it).

One engine, generic over *what* it maps (a ``DenseOutput``):

* ``ClassPosteriors``: soft-max class posteriors (paper §3.2; the only
  output of ``python -m vgg_jax.evaluate``);
* ``PooledDescriptor``: the FC2 map averaged over valid positions (Appendix
  B's 4096-D descriptor before normalisation);
* a box output (Appendix A) is a ``DenseOutput`` whose ``image`` returns
  the masked box map and its valid size instead of a pooled vector.

and one machinery for *how*:

* shape buckets: rescaled images of every aspect ratio are grouped by
  canvas shape (each side rounded up to a multiple of ``bucket_step``) and
  run as a batch on a zero canvas, image in the top-left corner; the model's
  masked application (``VGG.features(x, valid_hw=...)``) makes every valid
  position equal the image run alone (tested to 1e-5), with one compilation
  per bucket shape instead of one per image size;
* horizontal flips (within each image's valid width), on device;
* crops (centre, the multicrop grid: ``preprocess.protocol_views``), their
  flips on device;
* padding: partial batches to a power of two, to whole multiples of this
  process's devices (``sharding.LocalPlacement``); padded rows are dropped;
* the cross-host gather is ``sharding.allgather_rows`` on the results
  (``eval/protocols.scale_posteriors``).

Results reach the caller through ``sink(rows, values)``: ``rows`` the
caller's row numbers, ``values`` the output's pytree with one leading row
per image (host numpy).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vgg_jax import mean_image as mean_image_lib
from vgg_jax import preprocess
from vgg_jax import sharding as sharding_lib
from vgg_jax.models.vgg import valid_positions

Sink = Callable[[list[int], Any], None]


def normalise_on_device(convention, images: jax.Array,
                        mean_window=None) -> jax.Array:
  """``InputConvention.normalise`` in jnp (uint8 travels, not float32).

  ``mean_window``: the per-pixel mean under each view (a mean-image
  convention's, RGB 0-255, shape of ``images``; vgg_jax/mean_image.py)."""
  convention.check_mean_window(mean_window)
  x = images.astype(jnp.float32)
  if mean_window is not None:
    x = x - mean_window
  if convention.channel_order == "BGR":
    x = x[..., ::-1]
  if convention.scale != 1.0:
    x = x * jnp.float32(convention.scale)
  mean = jnp.asarray(convention.mean, jnp.float32)
  std = jnp.asarray(convention.std, jnp.float32)
  return (x - mean) / std


def flip_within(x: jax.Array, w: jax.Array) -> jax.Array:
  """Mirrors each image's own valid width (the canvas padding stays right)."""
  j = jnp.arange(x.shape[2])[None, :]
  src = jnp.where(j < w[:, None], w[:, None] - 1 - j, j)  # (N, Wc)
  return jnp.take_along_axis(x, src[:, None, :, None], axis=2)


def masked_mean(maps: jax.Array, hw: jax.Array) -> jax.Array:
  """(N, h, w, D) map -> (N, D): the mean over each image's valid positions."""
  maps = maps.astype(jnp.float32)
  valid = valid_positions(maps.shape[1:3], hw[:, 0], hw[:, 1])
  count = jnp.maximum(valid.sum(axis=(1, 2)), 1)[:, None]
  return jnp.where(valid[..., None], maps, 0).sum(axis=(1, 2)) / count


class DenseOutput:
  """What the engine computes per image (subclass; instances must be
  hashable, they are static arguments of the jitted programs).

  ``image(model, x, valid_hw)``: x (V*N, Hc, Wc, C) normalised canvases
  (V = 2 views, the images then their flips), valid_hw (V*N, 2) -> a pytree
  with leading axis V*N.  ``merge_flips(tree, n)`` -> leading axis N.
  ``crop(model, x)``: x (M, crop, crop, C) -> pytree leading M;
  ``merge_crops(tree, flips, n, k)`` -> leading N (k crops per image, and
  with ``flips`` their mirrors after them).
  ``width(model)``: the size of one row (for the callers' output arrays).
  """

  name = "output"
  # ``merge_crops`` averages the crops' outputs, so k identical crops may run
  # as one (``CropBatcher``).  An output that keeps each crop sets False.
  crops_averaged = True

  def image(self, model, x, valid_hw):
    raise NotImplementedError

  def crop(self, model, x):
    raise NotImplementedError

  def merge_flips(self, tree, n: int):
    return jax.tree_util.tree_map(lambda p: (p[:n] + p[n:]) / 2, tree)

  def merge_crops(self, tree, flips: bool, n: int, k: int):
    return jax.tree_util.tree_map(
        lambda p: p.reshape((2 if flips else 1, n, k) + p.shape[1:]).mean(
            axis=(0, 2)), tree)

  def width(self, model) -> int:
    raise NotImplementedError

  def __hash__(self):
    return hash(type(self))

  def __eq__(self, other):
    return type(self) is type(other)


class ClassPosteriors(DenseOutput):
  """Soft-max posteriors (paper §3.2).  Dense: the class score map averaged
  over valid positions (logits; the paper "sum-pools", and a sum and a mean
  differ only by a constant factor when all maps have the same size, so we
  average), then soft-max.  Crops: soft-max of each crop's logits."""

  name = "class_posteriors"

  def image(self, model, x, valid_hw):
    scores, hw = model.output_map(x, valid_hw=valid_hw)
    return jax.nn.softmax(masked_mean(scores, hw))

  def crop(self, model, x):
    return jax.nn.softmax(model(x, train=False))

  def width(self, model) -> int:
    return model.num_classes


class PooledDescriptor(DenseOutput):
  """Appendix B: the FC2 map (after ReLU) averaged over valid positions;
  the flip's descriptor averaged in.  Normalisation is the caller's."""

  name = "fc2_descriptor"

  def image(self, model, x, valid_hw):
    f, hw = model.penultimate(x, valid_hw=valid_hw)
    return masked_mean(f, hw)

  def crop(self, model, x):
    return model.penultimate(x).astype(jnp.float32).mean(axis=(1, 2))

  def width(self, model) -> int:
    return model.spec.fc_width


CLASS_POSTERIORS = ClassPosteriors()


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _dense_program(graphdef, convention, output, flips, state, canvas, hw,
                   mean=None):
  model = nnx.merge(graphdef, state)
  # A mean canvas is flipped with the image below (flip_within).
  x = normalise_on_device(convention, canvas, mean)
  n = canvas.shape[0]
  if flips:
    x = jnp.concatenate([x, flip_within(x, hw[:, 1])])
    hw = jnp.concatenate([hw, hw])
  out = output.image(model, x, hw)
  return output.merge_flips(out, n) if flips else out


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _crop_program(graphdef, convention, output, flips, state, crops,
                  mean=None):
  model = nnx.merge(graphdef, state)
  n, k = crops.shape[:2]
  flat = (n * k,) + crops.shape[2:]
  # Each crop's mean window is flipped with it below.
  x = normalise_on_device(convention, crops.reshape(flat),
                          None if mean is None else mean.reshape(flat))
  if flips:
    x = jnp.concatenate([x, x[:, :, ::-1]])
  return output.merge_crops(output.crop(model, x), flips, n, k)


def dense_bucket(height: int, width: int, step: int) -> tuple[int, int]:
  """Canvas shape for a rescaled image: each side up to a multiple of step."""
  return (sharding_lib.round_up(height, step),
          sharding_lib.round_up(width, step))


class DenseEngine:
  """Runs device batches of one model for one ``DenseOutput``.

      engine = DenseEngine(model, convention)           # class posteriors
      post = engine.images(canvas, hw, batch=8)         # (n, classes)
      post = engine.crops(crops, flips=True, batch=8)   # crops (n, k, ...)

  Batches are padded (``LocalPlacement.padded_size``) and split over this
  process's devices of ``mesh``; padded rows are dropped from the result.
  """

  def __init__(self, model, convention, output: DenseOutput = CLASS_POSTERIORS,
               *, mesh=None):
    self.graphdef, state = nnx.split(model)
    self.model = model
    self.convention = convention
    self.output = output
    self.placement = sharding_lib.LocalPlacement(mesh)
    self.state = self.placement.replicate(state)

  @property
  def width(self) -> int:
    return self.output.width(self.model)

  def _fetch(self, tree, n):
    return jax.tree_util.tree_map(lambda a: np.asarray(a)[:n], tree)

  def crops(self, crops: np.ndarray, flips: bool, batch: int, mean=None):
    """crops (n, k, crop, crop, C) uint8 -> the output of each image.

    ``mean``: float32, the shape of ``crops``: the per-pixel mean under each
    crop (required by a mean-image convention: ``mean_image.views``)."""
    self.convention.check_mean_window(mean)
    n = len(crops)
    size = self.placement.padded_size(n, batch)
    if mean is not None:
      mean = self.placement.put(sharding_lib.pad_rows(
          np.asarray(mean, np.float32), size))
    out = _crop_program(self.graphdef, self.convention, self.output,
                        bool(flips), self.state,
                        self.placement.put(sharding_lib.pad_rows(crops, size)),
                        mean)
    return self._fetch(out, n)

  def images(self, canvas: np.ndarray, hw: np.ndarray, batch: int, *,
             flips: bool = True):
    """canvas (n, Hc, Wc, C) uint8, image i in its top-left hw[i] corner ->
    the output of each image (and of its flip, merged, when ``flips``)."""
    n = len(canvas)
    size = self.placement.padded_size(n, batch)
    mean = None
    if self.convention.mean_image:
      # The whole image is not a window of the central square: its mean is
      # the mean canvas (the mean image over the central square, borders
      # replicated; vgg_jax/mean_image.py), in the same top-left corner.
      mean = np.zeros((size,) + canvas.shape[1:], np.float32)
      for i, (h, w) in enumerate(np.asarray(hw)):
        mean[i, :h, :w] = mean_image_lib.canvas(self.convention.mean_image,
                                                (h, w))
      mean = self.placement.put(mean)
    # Padding rows get a 1x1 "image": masked like any other, then dropped.
    hw = np.concatenate([hw, np.ones((size - n, 2), hw.dtype)])
    out = _dense_program(self.graphdef, self.convention, self.output,
                         bool(flips), self.state,
                         self.placement.put(sharding_lib.pad_rows(canvas, size)),
                         self.placement.put(hw.astype(np.int32)), mean)
    return self._fetch(out, n)


class CropBatcher:
  """centre (1 crop) or multicrop (grid x grid crops + flips) batches.

  Where every view of an image is the same crop (an image the crop's size:
  each grid position cuts all of it, e.g. the miniature's Q = 32 with 32x32
  crops), the crop runs once: the average of k identical posteriors is that
  posterior.  Images are batched by their number of distinct views.
  """

  def __init__(self, engine: DenseEngine, sink: Sink, *, kind: str, crop: int,
               grid: int, batch_size: int):
    self.engine, self.sink, self.kind = engine, sink, kind
    self.crop, self.grid, self.batch_size = crop, grid, batch_size
    self.mean_image = engine.convention.mean_image
    self.pending: dict[int, tuple[list, list, list]] = {}  # k -> views, ...

  def add(self, row: int, img: np.ndarray):
    # Flips of the multicrop grid are cut on device.
    views = preprocess.protocol_views(img, self.kind, self.crop, self.grid,
                                      flips=False)
    means = None
    if self.mean_image:  # the same views of the image's mean canvas
      means = mean_image_lib.views(self.mean_image, img.shape, self.kind,
                                   self.crop, self.grid, flips=False)
    if (len(views) > 1 and self.engine.output.crops_averaged
        and _all_equal(views) and (means is None or _all_equal(means))):
      views = views[:1]
      means = None if means is None else means[:1]
    batch = self.pending.setdefault(len(views), ([], [], []))
    batch[0].append(views)
    if means is not None:
      batch[1].append(means)
    batch[2].append(row)
    if len(batch[2]) >= self.batch_size:
      self._run(len(views))

  def _run(self, k: int):
    views, means, rows = self.pending.pop(k)
    self.sink(rows, self.engine.crops(
        np.stack(views), self.kind in ("multicrop", "tencrop"),
        self.batch_size, np.stack(means) if means else None))

  def flush(self):
    for k in sorted(self.pending):
      self._run(k)


def _all_equal(stack: np.ndarray) -> bool:
  return bool((stack == stack[:1]).all())


class DenseBatcher:
  """Shape buckets of whole rescaled images, run as masked canvases."""

  def __init__(self, engine: DenseEngine, sink: Sink, *, bucket_step: int,
               batch_size: int, max_pending: int | None = None,
               flips: bool = True):
    self.engine, self.sink, self.flips = engine, sink, flips
    self.step, self.batch_size = bucket_step, batch_size
    self.max_pending = max_pending or 8 * batch_size
    self.buckets: dict[tuple[int, int], list] = {}
    self.buckets_used: set[tuple[int, int]] = set()

  def add(self, row: int, img: np.ndarray):
    key = dense_bucket(img.shape[0], img.shape[1], self.step)
    items = self.buckets.setdefault(key, [])
    items.append((row, img))
    if len(items) >= self.batch_size:
      self._run(key)
    elif sum(len(v) for v in self.buckets.values()) > self.max_pending:
      self._run(max(self.buckets, key=lambda k: len(self.buckets[k])))

  def _run(self, key):
    items = self.buckets.pop(key)
    if not items:
      return
    self.buckets_used.add(key)
    c = items[0][1].shape[2]
    canvas = np.zeros((len(items),) + key + (c,), np.uint8)
    hw = np.zeros((len(items), 2), np.int32)
    for i, (_, img) in enumerate(items):
      canvas[i, :img.shape[0], :img.shape[1]] = img
      hw[i] = img.shape[:2]
    self.sink([r for r, _ in items],
              self.engine.images(canvas, hw, self.batch_size,
                                 flips=self.flips))

  def flush(self):
    for key in list(self.buckets):
      self._run(key)


def make_batcher(part: str, engine: DenseEngine, sink: Sink, *, crop: int,
                 grid: int, batch_size: int, bucket_step: int):
  """The batcher of one protocol part: 'dense', 'centre', 'multicrop' or
  'tencrop'."""
  if part == "dense":
    return DenseBatcher(engine, sink, bucket_step=bucket_step,
                        batch_size=batch_size)
  if part in ("centre", "multicrop", "tencrop"):
    return CropBatcher(engine, sink, kind=part, crop=crop, grid=grid,
                       batch_size=batch_size)
  raise ValueError(f"unknown protocol part {part!r}; expected 'dense', "
                   "'centre', 'multicrop' or 'tencrop'")
