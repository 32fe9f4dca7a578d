"""grain input pipelines: the paper's section 3.1 (training) and 3.2 (test).

(Over 600 lines because the training and evaluation pipelines share the
source registry, the process sharding and the grain plumbing; the readers
are in ``vgg_jax/data/readers.py``.)

Sources (``data_cfg.source``):
- ``"fashion_mnist"``: the embedded default.  Debian's IDX files
  (``apt-get install dataset-fashion-mnist`` -> /usr/share/datasets/
  fashion-mnist) or, failing that, a prepared TFDS ``fashion_mnist``.  Held in
  memory; transforms run vectorised over whole batches (no per-image calls).
- ``"tfds"``: any TFDS image-classification dataset (``data_cfg.name``, e.g.
  ``imagenet2012``) prepared as ArrayRecord (``python -m vgg_jax.data prepare
  NAME``), read with ``tfds.data_source`` (no TensorFlow needed to read).
- ``"folder"``: ``data_dir/<split>/<class>/<image>`` (ImageNet's own train/
  layout).  Class indices come from a JSON file written once
  (``data_cfg.class_index_path`` or ``data_dir/class_index.json``), so labels
  never change between runs.

Training iterator (``create_train_iterator``): yields
``{"image": float32 (local_batch, crop, crop, C), "label": int32 (local_batch,)}``
forever.  One global order for every process count (``train_batches``):
position g of the run is example ``order[g]``, ``order`` being the training
set reshuffled each epoch from (seed, epoch); global batch k is positions
[kB, (k+1)B) and process p (``jax.process_index()`` of
``jax.process_count()``, overridable) takes rows [kB + pb, kB + (p+1)b).
Every random draw is a function of (seed, g), so the global batch of step k
is the same on 1 or P hosts, hosts draw differently, and the same seed and
step give the same batch on every run and for any number of grain workers.
``get_state()``/``set_state()`` (JSON-serialisable dicts) make a resumed run see
exactly the batches an uninterrupted one would; the iterator is a
``grain.DatasetIterator`` so orbax's ``grain.checkpoint.CheckpointSave`` works
too.  Batches are built whole inside grain's index-addressed stage, so they
do not depend on the number of reader threads or worker processes either.
Undecodable training images (truncated, zero bytes, not an image) are
skipped, logged and counted (``iterator.skipped``); the slot is refilled
with another example of the same batch, freshly augmented, so every batch
has ``local_batch`` examples.

Evaluation iterator (``create_eval_iterator``), batched (default):
``{"image": float32 (local_batch, ...), "label": int32, "mask": int32,
"index": int64, "decode_error": int32}`` where

- ``mask`` is 1 for a real, decoded example and 0 for padding or a decode
  failure; ``index`` is the example's position in the split (-1 for padding);
- ``decode_error`` is 1 for an example whose image could not be decoded: its
  image is all zeros before normalisation and its mask 0; count it as an
  error (it is never
  silently dropped).  ``iterator.failed`` lists
  ``{"index", "name", "reason"}`` for every failure seen so far;
- the split is padded to whole *global* batches: every process yields
  ceil(N / global_batch) batches, and global batch k holds split positions
  [k*B, (k+1)*B), process p the slice [k*B + p*b, k*B + (p+1)*b), so each
  example is seen exactly once over all processes.
- image shape by protocol: ``"centre"``: (b, crop, crop, C); ``"multicrop"``:
  (b, 2*grid*grid, crop, crop, C), the 5x5 grid of ``preprocess.grid_crops``
  followed by the same crops flipped; ``"dense"`` (batched): only if every
  rescaled image has the same size (e.g. Fashion-MNIST), else use
  ``batch=False``.

With ``batch=False`` (for dense evaluation of variable-size images) the
iterator yields single examples ``{"image": uint8 (H, W, 3) rescaled to Q,
not normalised, "label": int, "index": int, "name": str, "mask": 0/1,
"decode_error": "" or the reason}`` over the same padded per-process
positions (padding: mask 0, index -1, a 1x1 zero image).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
import pathlib
import struct
from typing import Any, Sequence

import grain
import ml_collections
from ml_collections import config_dict
import numpy as np

from vgg_jax import conventions
from vgg_jax import mean_image as mean_image_lib
from vgg_jax import preprocess
from vgg_jax.data import readers
# The readers' names, where callers have always found them.
from vgg_jax.data.readers import (FASHION_MNIST_CLASSES, FASHION_MNIST_DIR,
                                  FASHION_MNIST_MEAN, FASHION_MNIST_STD,
                                  IMAGE_EXTENSIONS, DatasetInfo,
                                  FolderImageSource, TfdsImageSource,
                                  fashion_mnist_split,
                                  load_or_create_class_index, tfds_module)

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------
# Configuration


def default_data_config(source: str = "fashion_mnist") -> ml_collections.ConfigDict:
  """Every data field, with the paper's defaults for ImageNet-like sources.

  ``source="fashion_mnist"`` (default) gives small-image settings (28x28 grey
  rescaled to 32); ``"tfds"``/``"folder"`` give the paper's 224 crops.
  """
  # Not type-safe: train_scale is an int S or a pair [S_min, S_max].
  c = ml_collections.ConfigDict(type_safe=False)
  # Where the data comes from: a registered source (``source_names()``):
  # "fashion_mnist", "tfds" or "folder".
  kind = get_source(source)
  c.source = source
  # TFDS dataset name (source="tfds"), e.g. "imagenet2012".
  c.name = ""
  # TFDS data_dir; the folder root (source="folder"); the IDX directory
  # (source="fashion_mnist"; None means /usr/share/datasets/fashion-mnist).
  # A typed placeholder (not None), so --config.data.data_dir=DIR works.
  c.data_dir = ml_collections.config_dict.placeholder(str)
  c.train_split = "train"
  c.eval_split = "validation"
  # source="folder": JSON {class_name: index}; None -> data_dir/class_index.json
  c.class_index_path = ml_collections.config_dict.placeholder(str)
  # The paper's 224 crops (§3.1); small-image sources change these.
  c.crop_size = 224  # section 3.1: 224x224 crops
  # S: an int (single-scale: 256 or 384) or [S_min, S_max] (jittering,
  # S drawn uniformly per image; the paper uses [256, 512]).
  c.train_scale = 256
  c.eval_scale = 256  # Q (section 3.2); Q = S for fixed-S models
  c.train_pad = 0  # the paper pads nothing
  c.pca_std = 0.1  # alpha ~ N(0, 0.1) (Krizhevsky et al. 2012)
  c.mean_rgb = conventions.IMAGENET_MEAN_RGB_255
  c.std_rgb = (1.0, 1.0, 1.0)
  # A per-pixel mean image (.npy, 256x256x3, written by `python -m
  # vgg_jax.data stats --mean_image FILE`) subtracted instead of mean_rgb:
  # Krizhevsky et al.'s AlexNet input (vgg_jax/mean_image.py); "" for none.
  c.mean_image = ""
  c.image_channels = 3
  kind.configure(c)
  c.flip = True  # random horizontal flip (section 3.1)
  # Training crops from the central S x S square only (Krizhevsky et al.'s
  # AlexNet input); VGG crops from the whole rescaled image (section 3.1).
  c.central_square = False
  # RGB covariance eigenvalues (0-1 scale) and eigenvectors (columns); see
  # `python -m vgg_jax.data stats` to compute them on your own data.
  c.pca_eigval = conventions.IMAGENET_PCA_EIGVAL
  c.pca_eigvec = conventions.IMAGENET_PCA_EIGVEC
  # Multi-crop grid (section 3.2: 5x5 crops, each with its flip).
  c.multicrop_grid = 5
  # grain: worker processes (0 = in the main process) and reader threads.
  c.num_workers = 0
  c.num_threads = 4
  c.prefetch_buffer_size = 2  # per worker, in batches
  c.shuffle = True
  return c


def input_convention(data_cfg) -> conventions.InputConvention:
  """The paper's convention for this data: RGB 0-255 minus ``mean_rgb``;
  with ``data_cfg.mean_image``, minus that per-pixel mean image instead
  (``mean_rgb`` unused; the file is read and checked here, so a missing or
  wrong one fails before training starts).

  (For imported weights use the weights' own convention instead.)
  """
  path = data_cfg.get("mean_image") or ""
  if not path:
    return conventions.InputConvention("RGB", 1.0, tuple(data_cfg.mean_rgb),
                                       tuple(data_cfg.std_rgb))
  if not get_source(data_cfg.source).supports_mean_image:
    raise ValueError(
        f"data.mean_image is set but data.source {data_cfg.source!r} does "
        "not support a per-pixel mean image (the RGB image sources do: "
        f"{', '.join(n for n in source_names() if _SOURCES[n].supports_mean_image)}"
        "); set data.mean_image=''")
  if int(data_cfg.image_channels) != 3 or int(data_cfg.train_pad):
    raise ValueError(
        "data.mean_image needs RGB images (data.image_channels=3) and no "
        f"zero border (data.train_pad=0); got {data_cfg.image_channels} and "
        f"{data_cfg.train_pad}")
  path = os.path.abspath(path)
  mean_image_lib.load(path)  # a clear error now, not in a worker later
  return conventions.InputConvention("RGB", 1.0, (0.0, 0.0, 0.0),
                                     tuple(data_cfg.std_rgb),
                                     mean_image=path)


def _train_scale_range(data_cfg) -> tuple[int, int]:
  s = data_cfg.train_scale
  if isinstance(s, (int, np.integer)):
    lo = hi = int(s)
  else:
    s = tuple(s)
    if len(s) != 2 or s[0] > s[1]:
      raise ValueError(
          f"train_scale must be an int S or [S_min, S_max], got {s}")
    lo, hi = int(s[0]), int(s[1])
  if lo + 2 * data_cfg.train_pad < data_cfg.crop_size:
    raise ValueError(
        f"train_scale {s} (+ 2*train_pad) is smaller than crop_size "
        f"{data_cfg.crop_size}: the paper's S must be >= the crop")
  return lo, hi


def _resolve_processes(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(
        f"process_index {process_index} not in [0, {process_count})")
  return int(process_index), int(process_count)


def _local_batch(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(
        f"global_batch_size {global_batch_size} must be a positive multiple "
        f"of the number of processes ({process_count})")
  return global_batch_size // process_count


# ----------------------------------------------------------------------------
# Fashion-MNIST: in memory, vectorised


def batch_random_crop_flip(images: np.ndarray, crop: int, pad: int, flip: bool,
                           rng: np.random.Generator, *,
                           draw_rows: tuple[int, int] | None = None
                           ) -> np.ndarray:
  """Vectorised random crop (after zero-padding by ``pad``) and flip.

  ``images``: (B, H, W) or (B, H, W, C).  Same distribution as calling
  ``preprocess.random_crop``/``horizontal_flip`` per image.  With
  ``draw_rows=(first, total)`` the draws are made for ``total`` rows (a
  whole global batch) and rows ``first .. first + B`` are used, so a
  process's rows get the draws they get in the one-process batch.
  """
  if pad:
    widths = [(0, 0), (pad, pad), (pad, pad)] + [(0, 0)] * (images.ndim - 3)
    images = np.pad(images, widths)
  b, h, w = images.shape[:3]
  first, total = draw_rows or (0, b)
  if first < 0 or first + b > total:
    raise ValueError(f"draw_rows {draw_rows} do not hold {b} rows")
  rows_used = slice(first, first + b)
  tops = rng.integers(0, h - crop + 1, size=total)[rows_used]
  lefts = rng.integers(0, w - crop + 1, size=total)[rows_used]
  cols = lefts[:, None] + np.arange(crop)[None, :]  # (B, crop)
  if flip:
    flips = (rng.random(total) < 0.5)[rows_used]
    cols = np.where(flips[:, None], cols[:, ::-1], cols)
  rows = tops[:, None] + np.arange(crop)[None, :]
  return images[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


class _FashionMnistAugment:
  """This process's rows of a global batch -> augmented, normalised batch.

  Vectorised: global batch k draws every row's crop and flip from
  ``default_rng([seed, k])`` at once and each process keeps its own rows,
  so an example's draws depend on (seed, its global position) only.
  """

  def __init__(self, images, labels, data_cfg, convention, seed,
               global_batch):
    self.images, self.labels = images, labels
    self.crop, self.pad = int(data_cfg.crop_size), int(data_cfg.train_pad)
    self.flip = bool(data_cfg.flip)
    self.channels = int(data_cfg.image_channels)
    self.convention = convention
    self.seed, self.global_batch = int(seed), int(global_batch)

  def __call__(self, batch: dict):
    idx = batch["index"]
    k, first = divmod(int(batch["position"][0]), self.global_batch)
    x = batch_random_crop_flip(self.images[idx], self.crop, self.pad,
                               self.flip, np.random.default_rng([self.seed, k]),
                               draw_rows=(first, self.global_batch))
    x = readers.grey_to_channels(x, self.channels)
    return {"image": preprocess.normalise_images(x, self.convention),
            "label": self.labels[idx],
            "num_skipped": np.zeros(len(idx), np.int32)}


def _fashion_mnist_train(data_cfg, *, local_batch, seed, convention,
                         process_index, process_count):
  lo, hi = _train_scale_range(data_cfg)
  if lo != hi:
    raise ValueError("scale jittering is not supported for Fashion-MNIST "
                     "(in-memory pre-rescaled images); use an int train_scale")
  images, labels = readers.fashion_mnist_resized(data_cfg, data_cfg.train_split, lo)
  augment = _FashionMnistAugment(images, labels, data_cfg, convention,
                                 _derived_seed(seed, 1),
                                 local_batch * process_count)
  ds = train_batches(len(labels), seed=seed, local_batch=local_batch,
                     process_index=process_index, process_count=process_count,
                     shuffle=data_cfg.shuffle)
  return ds.map(augment).to_iter_dataset(_read_options(data_cfg))


# ----------------------------------------------------------------------------
# Shared helpers


def _derived_seed(seed: int, stream: int) -> int:
  return int(np.random.SeedSequence([int(seed), stream]).generate_state(1)[0])


def example_rng(seed: int, position: int, attempt: int = 0
                ) -> np.random.Generator:
  """The generator of every draw (S, crop, flip, alpha) of the example at

  global position ``position`` of the run (``train_batches``); ``attempt``
  1 is for the replacement of an undecodable example.
  """
  key = [int(seed), int(position)] + ([int(attempt)] if attempt else [])
  return np.random.default_rng(key)


class _ProcessRows:
  """Global batch number k -> this process's rows of it (see train_batches)."""

  def __init__(self, order: grain.MapDataset, local_batch: int,
               process_index: int, process_count: int):
    self.order = order
    self.local_batch = local_batch
    self.global_batch = local_batch * process_count
    self.first_row = local_batch * process_index

  def __call__(self, k: int) -> dict:
    start = int(k) * self.global_batch + self.first_row
    positions = np.arange(start, start + self.local_batch, dtype=np.int64)
    return {"position": positions,
            "index": np.asarray([self.order[int(g)] for g in positions],
                                np.int64)}


def train_batches(num_examples: int, *, seed: int, local_batch: int,
                  process_index: int, process_count: int,
                  shuffle: bool = True) -> grain.MapDataset:
  """The endless training batches of one process, as example indices.

  One global order whatever the process count: position g of the run holds
  example ``order[g]``, where each epoch of ``order`` is a fresh permutation
  of the whole training set (grain folds the epoch into the shuffle seed),
  a function of (seed, epoch) only.  Global batch k is positions
  [kB, (k+1)B), B = ``local_batch * process_count``; process p takes rows
  [kB + pb, kB + (p+1)b), the rows ``jax.make_array_from_process_local_data``
  puts on its devices.  Element k: ``{"position": int64 (b,), "index": int64
  (b,)}``; key every random draw by ``position`` (``example_rng``) and the
  global batch of step k is the same on any number of processes.
  """
  if num_examples < 1:
    raise ValueError("the training split has no examples")
  if not 0 <= process_index < process_count:
    raise ValueError(
        f"process_index {process_index} not in [0, {process_count})")
  order = grain.MapDataset.range(num_examples)
  if shuffle:
    order = order.shuffle(seed=seed)
  order = order.repeat()
  num_batches = len(order) // (local_batch * process_count)
  return grain.MapDataset.range(num_batches).map(
      _ProcessRows(order, local_batch, process_index, process_count))


def _read_options(data_cfg) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=int(data_cfg.num_threads),
                           prefetch_buffer_size=max(
                               int(data_cfg.num_threads) * 2, 8))


def _maybe_mp(ds: grain.IterDataset, data_cfg) -> grain.IterDataset:
  if data_cfg.num_workers and data_cfg.num_workers > 0:
    # grain's worker processes read absl flags; outside an absl app (tests,
    # notebooks) they are unparsed and reading them raises.
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=int(data_cfg.num_workers),
        per_worker_buffer_size=int(data_cfg.prefetch_buffer_size)))
  return ds


class TrainIterator(grain.DatasetIterator):
  """The training batch iterator: a grain ``DatasetIterator`` that also

  counts the training images skipped because they could not be decoded
  (``skipped``, also part of the state so a resumed run keeps counting).
  """

  def __init__(self, parent: grain.DatasetIterator):
    super().__init__(parent)
    self.skipped = 0

  def __next__(self):
    batch = next(self._parent)
    skipped = int(np.sum(batch.pop("num_skipped")))
    if skipped:
      self.skipped += skipped
      log.warning("skipped %d undecodable training images (%d so far)",
                  skipped, self.skipped)
    return batch

  def get_state(self):
    return {"grain": self._parent.get_state(), "skipped": self.skipped}

  def set_state(self, state):
    self._parent.set_state(state["grain"])
    self.skipped = int(state["skipped"])

  def close(self):
    close = getattr(self._parent, "close", None)
    if close is not None:
      close()


def create_train_iterator(data_cfg, *, global_batch_size: int, seed: int,
                          input_convention: conventions.InputConvention,
                          process_index: int | None = None,
                          process_count: int | None = None) -> TrainIterator:
  """Infinite iterator of training batches for this process (see module doc)."""
  process_index, process_count = _resolve_processes(process_index, process_count)
  local_batch = _local_batch(global_batch_size, process_count)
  kw = dict(local_batch=local_batch, seed=int(seed),
            convention=input_convention, process_index=process_index,
            process_count=process_count)
  ds = get_source(data_cfg.source).train_dataset(data_cfg, **kw)
  ds = _maybe_mp(ds, data_cfg)
  return TrainIterator(iter(ds))


# ----------------------------------------------------------------------------
# Evaluation


def eval_num_batches(num_examples: int, global_batch_size: int) -> int:
  """Batches every process yields for a split of ``num_examples``."""
  return max(1, -(-num_examples // global_batch_size))


def _eval_global_position(local_pos: np.ndarray, local_batch: int,
                          process_index: int, process_count: int):
  k, r = np.divmod(local_pos, local_batch)
  return k * local_batch * process_count + process_index * local_batch + r


class EvalIterator(grain.DatasetIterator):
  """Evaluation batches (see module doc); ``failed`` lists decode failures."""

  def __init__(self, parent, *, num_batches: int, num_examples: int,
               batched: bool):
    super().__init__(parent)
    self.num_batches = num_batches
    self.num_examples = num_examples
    self.batched = batched
    self.failed: list[dict[str, Any]] = []

  def __next__(self):
    item = next(self._parent)
    if self.batched:
      names = item.pop("name")
      reasons = item.pop("reason")
      for j in np.nonzero(item["decode_error"])[0]:
        self._record(int(item["index"][j]), str(names[j]), str(reasons[j]))
    elif item["decode_error"]:
      self._record(int(item["index"]), item["name"], item["decode_error"])
    return item

  def _record(self, index, name, reason):
    self.failed.append({"index": index, "name": name, "reason": reason})
    log.error("evaluation image %d (%s) could not be decoded: %s", index, name,
              reason)

  def get_state(self):
    return {"grain": self._parent.get_state(), "failed": list(self.failed)}

  def set_state(self, state):
    self._parent.set_state(state["grain"])
    self.failed = list(state["failed"])

  def __len__(self):
    return self.num_batches

  def close(self):
    close = getattr(self._parent, "close", None)
    if close is not None:
      close()


def _eval_protocol_check(protocol):
  if protocol not in ("centre", "center", "dense", "multicrop", "tencrop"):
    raise ValueError(f"unknown evaluation protocol {protocol!r}; expected "
                     "'centre', 'dense', 'multicrop' or 'tencrop'")
  return "centre" if protocol == "center" else protocol


class _EvalIterable:
  """Re-iterable: each ``iter()`` starts a fresh pass over the split."""

  def __init__(self, make_iter, num_batches, num_examples):
    self._make_iter = make_iter
    self.num_batches = num_batches
    self.num_examples = num_examples

  def __iter__(self) -> EvalIterator:
    return self._make_iter()

  def __len__(self):
    return self.num_batches


def create_eval_iterator(data_cfg, *, split: str | None = None,
                         global_batch_size: int,
                         input_convention: conventions.InputConvention,
                         protocol: str = "centre", scale: int | None = None,
                         process_index: int | None = None,
                         process_count: int | None = None,
                         batch: bool = True) -> _EvalIterable:
  """One pass over an evaluation split, padded and masked (see module doc).

  Returns a re-iterable object (``len()`` = batches per process); each
  ``iter()`` gives an ``EvalIterator`` with ``failed`` and ``get_state``.
  """
  protocol = _eval_protocol_check(protocol)
  process_index, process_count = _resolve_processes(process_index, process_count)
  local_batch = _local_batch(global_batch_size, process_count)
  split = split or data_cfg.eval_split
  scale = int(scale or data_cfg.eval_scale)
  source = get_source(data_cfg.source).eval_source(data_cfg, split, scale)
  n = len(source)
  num_batches = eval_num_batches(n, global_batch_size)
  example_fn = _EvalExample(data_cfg, source, scale=scale, protocol=protocol,
                            convention=input_convention, batched=batch,
                            local_batch=local_batch,
                            process_index=process_index,
                            process_count=process_count)

  def make_iter():
    ds = grain.MapDataset.range(num_batches * local_batch).map(example_fn)
    if batch:
      ds = ds.batch(local_batch, batch_fn=_EvalBatcher(input_convention))
    ds = ds.to_iter_dataset(_read_options(data_cfg))
    ds = _maybe_mp(ds, data_cfg)
    return EvalIterator(iter(ds), num_batches=num_batches, num_examples=n,
                        batched=batch)

  return _EvalIterable(make_iter, num_batches, n)


class _EvalBatcher:
  """Stacks evaluation examples and normalises the images (batch_fn)."""

  def __init__(self, convention):
    self.convention = convention

  def __call__(self, items: Sequence[dict]) -> dict:
    out = {}
    # Mean-image conventions: each example carries the mean under its views.
    means = ([it["mean"] for it in items] if "mean" in items[0]
             else [None] * len(items))
    for k in items[0]:
      vals = [it[k] for it in items]
      if k == "mean":
        continue
      if k in ("name", "reason"):
        out[k] = np.asarray(vals, dtype=object)
      elif k == "image" and vals[0].ndim == 3:
        images = np.empty((len(vals),) + vals[0].shape, np.float32)
        for j, v in enumerate(vals):
          preprocess.normalise_into(images[j], v, self.convention,
                                    mean_window=means[j])
        out[k] = images
      elif k == "image":
        out[k] = preprocess.normalise_images(
            np.stack(vals), self.convention,
            mean_window=None if means[0] is None else np.stack(means))
      else:
        out[k] = np.stack(vals)
    return out


class _EvalExample:
  """position in this process's padded stream -> one example dict."""

  def __init__(self, data_cfg, source, *, scale, protocol, convention,
               batched, local_batch, process_index, process_count):
    self.source = source
    self.scale = scale
    self.protocol = protocol
    self.convention = convention
    self.batched = batched
    self.crop = int(data_cfg.crop_size)
    self.grid = int(data_cfg.multicrop_grid)
    self.local_batch = local_batch
    self.process_index = process_index
    self.process_count = process_count
    self.channels = int(data_cfg.image_channels)
    self._shape = None
    # Batched views of a mean-image convention carry the mean under them
    # ("mean", subtracted by _EvalBatcher); unbatched images go to the
    # dense engine, which cuts its own.
    self.mean_image = convention.mean_image if batched else ""

  def _out_shape(self):
    c = self.channels
    if self.protocol == "centre":
      return (self.crop, self.crop, c)
    if self.protocol == "multicrop":
      return (2 * self.grid * self.grid, self.crop, self.crop, c)
    if self.protocol == "tencrop":
      return (10, self.crop, self.crop, c)
    if self._shape is None:  # batched dense: needs one common size
      img = self._view(self.source.get(0)[0]) if self.source.prescaled else None
      self._shape = img.shape if img is not None else (self.scale, self.scale, c)
    return self._shape

  def _view(self, img):
    """A rescaled uint8 image -> the protocol's uint8 view."""
    view = preprocess.protocol_views(img, self.protocol, self.crop, self.grid,
                                     flips=True)
    return view[0] if self.protocol == "centre" else view

  def __call__(self, local_pos: int) -> dict:
    g = int(_eval_global_position(np.int64(local_pos), self.local_batch,
                                  self.process_index, self.process_count))
    if g >= len(self.source):  # padding
      shape = self._out_shape() if self.batched else (1, 1, self.channels)
      return self._example(np.zeros(shape, np.uint8), -1, -1, "", 0, "")
    try:
      view = self._centre_crop_of_encoded(g)
      if view is not None:
        view, label, name, mean = view
        return self._example(view, label, g, name, 1, "", mean)
      img, label, name = self.source.get(g, min_side=self.scale)
      if not self.source.prescaled:
        img = preprocess.rescale_shorter_side(img, self.scale)
      view = self._view(img) if self.batched else img
      if self.batched and self.protocol == "dense" and view.shape != self._out_shape():
        raise ValueError(
            f"batched dense evaluation needs images of one size; {name} is "
            f"{view.shape}, expected {self._out_shape()}: use batch=False")
      mean = None
      if self.mean_image:  # the same views cut from the mean canvas
        mean = mean_image_lib.views(self.mean_image, img.shape, self.protocol,
                                    self.crop, self.grid, flips=True)
        mean = mean[0] if self.protocol == "centre" else mean
      return self._example(view, label, g, name, 1, "", mean)
    except preprocess.DecodeError as e:
      label, name = self.source.label_and_name(g)
      shape = self._out_shape() if self.batched else (1, 1, self.channels)
      return self._example(np.zeros(shape, np.uint8), label, g, name, 0, str(e))

  def _centre_crop_of_encoded(self, g):
    """(centre crop, label, name) decoding only the crop (batched centre
    protocol, JPEG sources), else None."""
    read = getattr(self.source, "read", None)
    if (read is None or not self.batched or self.protocol != "centre"
        or self.source.prescaled):
      return None
    data, label, name = read(g)
    shape = preprocess.rescaled_jpeg_size(data, self.scale)
    if shape is None or min(shape) < self.crop:
      return None
    top, left = (shape[0] - self.crop) // 2, (shape[1] - self.crop) // 2
    try:
      view = preprocess.decode_rescaled_crop(data, self.scale, top, left,
                                             self.crop)
    except preprocess.DecodeError as e:
      raise preprocess.DecodeError(f"{name}: {e}") from e
    mean = (mean_image_lib.window(self.mean_image, shape, top, left,
                                  self.crop, self.crop)
            if self.mean_image else None)
    return view, label, name, mean

  def _example(self, img, label, index, name, mask, error, mean=None):
    if self.batched:
      ex = {"image": img, "label": np.int32(label), "mask": np.int32(mask),
            "index": np.int64(index), "decode_error": np.int32(bool(error)),
            "name": name, "reason": error}
      if self.mean_image:  # padding and failures: a zero mean (masked)
        ex["mean"] = (np.zeros(img.shape, np.float32) if mean is None
                      else mean)
      return ex
    return {"image": img, "label": int(label), "mask": int(mask),
            "index": int(index), "name": name, "decode_error": error}



def image_source(data_cfg, split):
  """The random-access image source of a split (tfds, folder, ...)."""
  return get_source(data_cfg.source).image_source(data_cfg, split)


class _TrainExample:
  """Source index + rng -> one augmented uint8 crop (section 3.1), or None

  if the image cannot be decoded.  Randomness (S, crop position, flip, PCA
  alpha) comes only from ``rng``.
  """

  def __init__(self, data_cfg, source):
    self.source = source
    self.scale_lo, self.scale_hi = _train_scale_range(data_cfg)
    self.crop = int(data_cfg.crop_size)
    self.pad = int(data_cfg.train_pad)
    self.flip = bool(data_cfg.flip)
    self.central_square = bool(data_cfg.get("central_square", False))
    self.pca_std = float(data_cfg.pca_std)
    self.eigval = np.asarray(data_cfg.pca_eigval, np.float64)
    self.eigvec = np.asarray(data_cfg.pca_eigvec, np.float64)

  def __call__(self, index, rng: np.random.Generator, out=None,
               convention=None):
    """-> (uint8 crop, label, RGB shift), or None if undecodable.

    With ``out`` (a float32 (crop, crop, 3) slot) and ``convention``, a
    JPEG that the crop-aware decoder handles is written there already
    normalised (shift included) and the crop returned is None; so is every
    crop of a mean-image convention (the window of the mean image under
    the crop, flipped with it, subtracted: Caffe's AlexNet input).
    """
    s = int(rng.integers(self.scale_lo, self.scale_hi + 1))
    try:
      plan = self._plan_encoded_crop(index, s, rng)
      if plan is None:
        img, label, geometry = self._crop_of_decoded(index, s, rng)
    except preprocess.DecodeError as e:
      log.warning("skipping training image: %s", e)
      return None
    if self.pca_std > 0:
      shift = preprocess.pca_shift_vector(rng, self.eigval, self.eigvec,
                                          self.pca_std)
    else:
      shift = np.zeros(3, np.float32)
    mean = None
    if convention is not None and convention.mean_image and out is not None:
      shape, top, left, flip = plan[-1] if plan is not None else geometry
      mean = mean_image_lib.window(convention.mean_image, shape, top, left,
                                   self.crop, self.crop, flip)
      if plan is None:
        preprocess.normalise_into(out, img, convention, shift, mean)
        return None, np.int32(label), shift
    if plan is not None:
      data, top, left, flip, label, name, _ = plan
      try:
        if out is not None and convention is not None:
          preprocess.decode_rescaled_crop_into(out, data, s, top, left, flip,
                                               convention, shift, mean)
          img = None
        else:
          img = preprocess.decode_rescaled_crop(data, s, top, left,
                                                self.crop, flip)
      except preprocess.DecodeError as e:
        log.warning("skipping training image: %s: %s", name, e)
        return None
    return img, np.int32(label), shift

  def _plan_encoded_crop(self, index, s, rng):
    """(bytes, top, left, flip, label, name, (rescaled shape, top, left,
    flip)) for decoding only what the crop sees, or None if the source or
    image needs the full decode.  Makes
    the same draws as _crop_of_decoded, so both give the same crop (up to
    interpolation rounding)."""
    read = getattr(self.source, "read", None)
    if read is None or self.pad:
      return None
    data, label, name = read(index)
    shape = preprocess.rescaled_jpeg_size(data, s)
    if shape is None:
      return None  # not a JPEG the fast path handles (reads it again: rare)
    top, left = preprocess.random_crop_offsets(
        shape, self.crop, rng, central_square=self.central_square)
    flip = self.flip and rng.random() < 0.5
    return data, top, left, flip, label, name, (shape, top, left, flip)

  def _crop_of_decoded(self, index, s, rng):
    img, label, _ = self.source.get(index, min_side=s)
    img = preprocess.rescale_shorter_side(img, s)
    if self.pad:
      img = np.pad(img, [(self.pad, self.pad), (self.pad, self.pad), (0, 0)])
    shape = img.shape[:2]
    # preprocess.random_crop's draws, with the offsets kept for the mean.
    top, left = preprocess.random_crop_offsets(
        shape, self.crop, rng, central_square=self.central_square)
    img = img[top:top + self.crop, left:left + self.crop]
    flip = self.flip and rng.random() < 0.5
    if flip:
      img = preprocess.horizontal_flip(img)
    return img, label, (shape, top, left, flip)


class _TrainBatch:
  """{"position", "index"} (``train_batches``) -> a finished training batch.

  Works on whole batches inside grain's MapDataset stage, so a batch depends
  only on (seed, positions): not on reader threads, worker processes or the
  number of hosts, and resuming is exact.  The example at global position g
  draws its randomness from ``example_rng(seed, g)``.  An undecodable image
  is skipped (logged, counted in ``num_skipped``) and its slot refilled with
  another example of this process's rows of the batch, freshly augmented,
  so batches keep their size.
  """

  def __init__(self, data_cfg, source, convention, seed):
    self.example = _TrainExample(data_cfg, source)
    self.convention = convention
    self.seed = int(seed)

  def __call__(self, batch: dict) -> dict:
    indices, positions = batch["index"], batch["position"]
    crop = self.example.crop
    images = np.empty((len(indices), crop, crop, 3), np.float32)
    made = [self.example(int(i), example_rng(self.seed, g), images[j],
                         self.convention)
            for j, (i, g) in enumerate(zip(indices, positions))]
    good = [j for j, m in enumerate(made) if m is not None]
    if not good:
      raise ValueError(
          f"none of the {len(indices)} training images at positions "
          f"{positions[0]}.. could be decoded (indices {list(indices)[:8]}...): "
          "is the dataset corrupt? `python -m vgg_jax.data prepare folder "
          "--check` lists undecodable files")
    skipped = np.zeros(len(indices), np.int32)
    for n, j in enumerate(j for j, m in enumerate(made) if m is None):
      donor = int(indices[good[n % len(good)]])
      made[j] = self.example(donor, example_rng(self.seed, positions[j], 1),
                             images[j], self.convention)
      skipped[j] = 1
    for j, (img, _, shift) in enumerate(made):
      if img is not None:  # else already written, normalised, into images[j]
        preprocess.normalise_into(images[j], img, self.convention, shift)
    return {"image": images,
            "label": np.asarray([m[1] for m in made], np.int32),
            "num_skipped": skipped}


def _image_train(data_cfg, *, local_batch, seed, convention, process_index,
                 process_count):
  source = image_source(data_cfg, data_cfg.train_split)
  if data_cfg.image_channels != 3:
    raise ValueError("image sources are RGB: set data_cfg.image_channels=3")
  ds = train_batches(len(source), seed=seed, local_batch=local_batch,
                     process_index=process_index, process_count=process_count,
                     shuffle=data_cfg.shuffle)
  ds = ds.map(_TrainBatch(data_cfg, source, convention, _derived_seed(seed, 1)))
  return ds.to_iter_dataset(_read_options(data_cfg))


def dataset_info(data_cfg) -> DatasetInfo:
  """Class count, split sizes, class names and channels of ``data_cfg``."""
  return get_source(data_cfg.source).info(data_cfg)


# ----------------------------------------------------------------------------
# The source registry: ``data.source`` names one of these.  A new source is
# one class with ``@register_source("name")`` (e.g. Appendix B's VOC or
# Caltech, Appendix A's ILSVRC boxes): its defaults, its info, its training
# dataset and its evaluation source; nothing else changes.

_SOURCES: dict[str, "DataSource"] = {}


def register_source(name: str):
  """Class decorator: ``data.source = name`` selects an instance of it."""
  def deco(cls):
    if name in _SOURCES:
      raise ValueError(f"data source {name!r} is registered twice")
    _SOURCES[name] = cls()
    _SOURCES[name].name = name
    return cls
  return deco


def get_source(name: str) -> "DataSource":
  if name not in _SOURCES:
    raise ValueError(f"unknown data source {name!r}; expected one of "
                     f"{', '.join(repr(n) for n in source_names())}")
  return _SOURCES[name]


def source_names() -> tuple[str, ...]:
  """The data sources a config's ``data.source`` may name."""
  return tuple(_SOURCES)


class DataSource:
  """One kind of data behind ``data.source``.

  ``configure(c)``: source-specific defaults of ``default_data_config``.
  ``info(data_cfg) -> DatasetInfo``.
  ``train_dataset(data_cfg, *, local_batch, seed, convention,
  process_index, process_count) -> grain.IterDataset`` of finished batches
  {"image": normalised float32, "label"} for this process.
  ``eval_source(data_cfg, split, scale)``: a random-access source
  (``len``, ``get(i, min_side)`` -> (uint8 image, label, name),
  ``label_and_name(i)``, ``prescaled``; optionally ``read(i)``) that the
  evaluation pipeline pads, shards and views (see ``TfdsImageSource``).
  ``image_source(data_cfg, split)``: the same kind of source for the
  split's images as stored (``python -m vgg_jax.data stats`` reads it).
  ``supports_mean_image``: whether ``data.mean_image`` (a per-pixel mean
  subtracted from 256-based RGB crops, vgg_jax/mean_image.py) applies.
  """

  name = ""
  supports_mean_image = False

  def configure(self, c) -> None:
    del c

  def info(self, data_cfg) -> DatasetInfo:
    raise NotImplementedError

  def train_dataset(self, data_cfg, **kw):
    raise NotImplementedError

  def eval_source(self, data_cfg, split: str, scale: int):
    raise NotImplementedError

  def image_source(self, data_cfg, split: str):
    raise NotImplementedError(
        f"data source {self.name!r} has no stored-image reader")


class _EncodedImages(DataSource):
  """Sources of encoded RGB images (decoded, rescaled and cropped here)."""

  supports_mean_image = True

  def image_source(self, data_cfg, split):
    raise NotImplementedError

  def info(self, data_cfg) -> DatasetInfo:
    train = self.image_source(data_cfg, data_cfg.train_split)
    ev = self.image_source(data_cfg, data_cfg.eval_split)
    return DatasetInfo(train.num_classes, len(train), len(ev),
                       train.class_names, 3)

  def train_dataset(self, data_cfg, **kw):
    return _image_train(data_cfg, **kw)

  def eval_source(self, data_cfg, split, scale):
    del scale
    return self.image_source(data_cfg, split)


@register_source("tfds")
class _Tfds(_EncodedImages):
  """A TFDS dataset prepared as ArrayRecord (``python -m vgg_jax.data
  prepare``), default imagenet2012."""

  def configure(self, c):
    c.name = "imagenet2012"

  def image_source(self, data_cfg, split):
    return TfdsImageSource(data_cfg.name, split, data_cfg.data_dir)


@register_source("folder")
class _Folder(_EncodedImages):
  """DATA_DIR/<split>/<class>/<images> with a class index."""

  def image_source(self, data_cfg, split):
    return FolderImageSource(data_cfg.data_dir, split,
                             data_cfg.class_index_path, data_cfg.train_split)


@register_source("fashion_mnist")
class _FashionMnist(DataSource):
  """Fashion-MNIST from Debian's IDX files (or TFDS), whole in memory."""

  def configure(self, c):
    c.name = "fashion_mnist"
    c.eval_split = "test"
    c.crop_size = 32  # network input side
    c.train_scale = 32  # S: 28x28 is rescaled to 32x32
    c.eval_scale = 32  # Q
    c.train_pad = 4  # zero border added before the random crop (translation)
    c.pca_std = 0.0  # colour shift needs colour
    c.mean_rgb = (FASHION_MNIST_MEAN,)
    c.std_rgb = (FASHION_MNIST_STD,)
    # 1: keep grey (model in_channels=1); 3: replicate to RGB.
    c.image_channels = 1

  def info(self, data_cfg) -> DatasetInfo:
    n_train = len(fashion_mnist_split(data_cfg, data_cfg.train_split)[1])
    n_eval = len(fashion_mnist_split(data_cfg, data_cfg.eval_split)[1])
    return DatasetInfo(10, n_train, n_eval, list(FASHION_MNIST_CLASSES),
                       int(data_cfg.image_channels))

  def train_dataset(self, data_cfg, **kw):
    return _fashion_mnist_train(data_cfg, **kw)

  def eval_source(self, data_cfg, split, scale):
    return readers.FashionMnistEvalSource(data_cfg, split, scale)

  def image_source(self, data_cfg, split):
    # scale None: the stored 28x28 images
    return readers.FashionMnistEvalSource(data_cfg, split, None)


# Public names for sources registered from other packages (Appendix A's
# vgg_jax/localisation/source.py).
train_scale_range = _train_scale_range
derived_seed = _derived_seed
read_options = _read_options
