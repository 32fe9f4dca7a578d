"""The paper's test protocols (§3.2) and top-1/top-5 error (§4).

Library (one code path for training-time evaluation and the command):

* ``evaluate_classifier(model, batches, mesh=None)``: top-1/top-5 error of
  a model over batches of {"image", "label", "mask"} (the training loop's
  evaluator).  Mask-aware: padded examples are never counted, and with a
  mesh over several hosts every example is counted exactly once.
* ``scale_posteriors(model, examples, ...)``: soft-max posteriors of every
  example at one test scale Q under the protocols "centre", "dense",
  "multicrop" (computed together from one decoded, rescaled image).
* ``evaluate_model(model, data_cfg, ...)``: a whole split, several scales,
  any protocol (including "dense+multicrop"); ``combine`` averages the
  posteriors of several scales, protocols and models (ensembles).

The protocols (paper §3.2):

* centre: rescale to Q, the central crop (the torchvision/Keras way).
* dense: the fully-convolutional net on the whole rescaled image; the class
  score map is averaged over positions (logits; the paper "sum-pools" it,
  and a sum and a mean differ by a constant factor only when all maps have
  the same size, so we average), then soft-max, averaged with the
  soft-max of the horizontally flipped image.
* multicrop: per Q the 5x5 grid of crops and their flips (50 crops),
  soft-max averaged.
* dense+multicrop: the mean of the two posteriors.
* several Q: posteriors averaged over Q; several models: averaged over models.

Dense evaluation of images of every aspect ratio (see docs/evaluation.md):
rescaled images are grouped into shape buckets (each side rounded up to a
multiple of ``bucket_step``) and run as a batch on a zero canvas, image in
the top-left corner.  ``masked_score_map`` re-zeroes everything outside each
image's valid region before every convolution (exactly the zeros that the
convolution's own "SAME" padding would see on the image alone), tracks the
valid size through every conv and pool (floor arithmetic, as the model), and
averages the class scores over the valid positions only.  The result equals
running each image alone at its exact size (tested to 1e-5), with one
compilation per bucket shape instead of one per image size.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import tempfile
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from vgg_jax.models import local_response_norm
from vgg_jax.models.vgg import max_pool as vgg_max_pool

TOP_K = 5


# ---------------------------------------------------------------------------
# Counting: top-1 / top-5 hits, masked.
# ---------------------------------------------------------------------------

def topk_hits(scores: jax.Array, labels: jax.Array, mask: jax.Array
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(top-1 hits, top-5 hits, number of real examples) of one batch.

  ``scores`` are logits or posteriors (N, classes): soft-max is monotone, so
  both rank the classes alike.  ``mask`` is 1 for real examples, 0 for
  padding; padding never counts.  Top-5 means "the label is among the k
  highest scores", k = min(5, classes).
  """
  k = min(TOP_K, scores.shape[-1])
  _, top = jax.lax.top_k(scores, k)
  hit = top == labels[:, None].astype(top.dtype)
  mask = mask.astype(jnp.int32)
  top1 = jnp.sum(hit[:, 0].astype(jnp.int32) * mask)
  top5 = jnp.sum(jnp.any(hit, axis=1).astype(jnp.int32) * mask)
  return top1, top5, jnp.sum(mask)


@functools.partial(jax.jit, static_argnums=0)
def _classifier_hits(graphdef, state, images, labels, mask):
  model = nnx.merge(graphdef, state)
  return topk_hits(model(images, train=False), labels, mask)


# ---------------------------------------------------------------------------
# Data parallelism: batches are process-local; a mesh makes them global.
# ---------------------------------------------------------------------------

def _data_axes(mesh: jax.sharding.Mesh) -> tuple[str, ...]:
  """The mesh axes the batch is split over: 'data' if the mesh has one."""
  if "data" in mesh.axis_names:
    return ("data",)
  return tuple(mesh.axis_names)


def _num_batch_shards(mesh: jax.sharding.Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in _data_axes(mesh)]))


def default_mesh() -> jax.sharding.Mesh:
  """A 1-D 'data' mesh over every device of every host."""
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def _auto_axes(mesh: jax.sharding.Mesh) -> jax.sharding.Mesh:
  """The same devices and axes with Auto axis types.

  ``jax.make_mesh`` defaults to Explicit axes, under which the model's
  reshape-based pooling of a batch-sharded array has no sharding rule;
  evaluation only splits the batch, so the compiler may place the rest.
  """
  auto = jax.sharding.AxisType.Auto
  if all(t == auto for t in mesh.axis_types):
    return mesh
  return jax.sharding.Mesh(mesh.devices, mesh.axis_names,
                           axis_types=(auto,) * len(mesh.axis_names))


def pad_batch(batch: Mapping[str, np.ndarray], multiple: int
              ) -> dict[str, np.ndarray]:
  """Pads a batch's leading axis to a multiple; padding gets mask 0."""
  batch = dict(batch)
  n = len(batch["label"])
  if "mask" not in batch:
    batch["mask"] = np.ones((n,), np.int32)
  extra = (-n) % multiple
  if extra:
    for key, value in batch.items():
      value = np.asarray(value)
      pad = np.zeros((extra,) + value.shape[1:], value.dtype)
      batch[key] = np.concatenate([value, pad])
  return batch


def put_batch(batch: Mapping[str, np.ndarray],
              mesh: jax.sharding.Mesh | None) -> dict[str, jax.Array]:
  """Host batch -> device arrays; with a mesh, one global array per key.

  Each process passes its own local slice;
  ``jax.make_array_from_process_local_data`` stitches the slices of all
  processes into one array split over the mesh's data axes.
  """
  if mesh is None:
    return {k: jnp.asarray(v) for k, v in batch.items()}
  axes = _data_axes(mesh)
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    spec = P(axes, *([None] * (value.ndim - 1)))
    out[key] = jax.make_array_from_process_local_data(
        NamedSharding(mesh, spec), value)
  return out


def replicate(tree: Any, mesh: jax.sharding.Mesh | None) -> Any:
  if mesh is None:
    return tree
  return jax.device_put(tree, NamedSharding(mesh, P()))


def _local_multiple(mesh: jax.sharding.Mesh | None) -> int:
  """Local batches are padded to a multiple of this (devices per process)."""
  if mesh is None:
    return 1
  return max(1, _num_batch_shards(mesh) // jax.process_count())


# ---------------------------------------------------------------------------
# The training loop's evaluator.
# ---------------------------------------------------------------------------

def errors_from_counts(top1_hits: int, top5_hits: int, num_examples: int
                       ) -> dict[str, float | int]:
  if num_examples <= 0:
    raise ValueError("no examples were evaluated (every mask was 0 or the "
                     "iterator was empty); check the evaluation split")
  return {"top1_error": 1.0 - top1_hits / num_examples,
          "top5_error": 1.0 - top5_hits / num_examples,
          "num_examples": int(num_examples)}


def evaluate_classifier(model: nnx.Module,
                        batches: Iterable[Mapping[str, np.ndarray]], *,
                        mesh: jax.sharding.Mesh | None = None
                        ) -> dict[str, float | int]:
  """Top-1 / top-5 error of ``model`` over ``batches``.

  Args:
    model: an NNX classifier; ``model(images)`` gives logits (N, classes).
    batches: process-local batches {"image": (n, H, W, C) float32 (already
      normalised), "label": (n,) int, "mask": (n,) 1 real / 0 padding};
      "mask" may be left out (all real).  On several processes every process
      must yield the same number of batches of the same shapes (the eval
      iterators pad to guarantee this).
    mesh: the batch is split over its 'data' axis (or all axes) and the
      model replicated.  When None on a multi-process run, a mesh over all
      devices is used so that counts are global.

  Returns:
    {"top1_error", "top5_error", "num_examples"}: errors as fractions in
    [0, 1], computed over real (mask 1) examples of all processes.
  """
  if mesh is None and jax.process_count() > 1:
    mesh = default_mesh()
  if mesh is not None:
    mesh = _auto_axes(mesh)
  graphdef, state = nnx.split(model)
  state = replicate(state, mesh)
  multiple = _local_multiple(mesh)
  totals = None
  for batch in batches:
    batch = pad_batch({k: batch[k] for k in ("image", "label", "mask")
                       if k in batch}, multiple)
    batch["label"] = np.asarray(batch["label"], np.int32)
    arrays = put_batch(batch, mesh)
    hits = _classifier_hits(graphdef, state, arrays["image"], arrays["label"],
                            arrays["mask"])
    # Summed on device; fetched once at the end (no per-batch host sync).
    totals = hits if totals is None else tuple(
        a + b for a, b in zip(totals, hits))
  if totals is None:
    raise ValueError("evaluate_classifier got no batches")
  top1, top5, n = (int(jax.device_get(t)) for t in totals)
  return errors_from_counts(top1, top5, n)


# ---------------------------------------------------------------------------
# The protocols on device.
# ---------------------------------------------------------------------------

PROTOCOLS = ("centre", "dense", "multicrop", "dense+multicrop")
# The views a protocol needs at every scale.
PROTOCOL_PARTS = {"centre": ("centre",), "dense": ("dense",),
                  "multicrop": ("multicrop",),
                  "dense+multicrop": ("dense", "multicrop")}


def normalise_on_device(convention, images: jax.Array) -> jax.Array:
  """``InputConvention.normalise`` in jnp (uint8 travels, not float32)."""
  x = images.astype(jnp.float32)
  if convention.channel_order == "BGR":
    x = x[..., ::-1]
  if convention.scale != 1.0:
    x = x * jnp.float32(convention.scale)
  mean = jnp.asarray(convention.mean, jnp.float32)
  std = jnp.asarray(convention.std, jnp.float32)
  return (x - mean) / std


def _zero_outside(x: jax.Array, h: jax.Array, w: jax.Array) -> jax.Array:
  """Zeroes x[n, i, j] for i >= h[n] or j >= w[n]."""
  rows = jnp.arange(x.shape[1])[None, :] < h[:, None]
  cols = jnp.arange(x.shape[2])[None, :] < w[:, None]
  keep = rows[:, :, None] & cols[:, None, :]
  return jnp.where(keep[..., None], x, jnp.zeros((), x.dtype))


def _conv_out(size, c):
  """Output size of conv spec c (the model's own arithmetic, models.table)."""
  if c.stride != 1 or c.padding != "SAME":
    return (size + 2 * c.padding - c.kernel) // c.stride + 1
  return size


def masked_score_map(model, x: jax.Array, hw: jax.Array
                     ) -> tuple[jax.Array, jax.Array]:
  """Class score maps of a batch of images of different sizes on one canvas.

  Args:
    model: a ``VGG`` (inference mode).
    x: (N, Hc, Wc, C) canvas, image n in the top-left hw[n] corner; what lies
      outside does not matter (it is zeroed before every convolution).
    hw: (N, 2) int32, each image's (height, width).
  Returns:
    (scores (N, hc, wc, classes), valid (N, hc, wc) bool): the class score
    map on the canvas and the positions that belong to each image's own map.

  Mirrors ``VGG.features``/``score_map`` layer by layer; the only addition is
  the re-zeroing, which makes every valid position see exactly what it sees
  when the image is evaluated alone (the convolution's zero padding at the
  image's border).  Pools use floor arithmetic, so pooled valid positions
  never reach past the image either.
  """
  spec = model.spec
  h, w = hw[:, 0], hw[:, 1]
  if model.dtype is not None:
    x = x.astype(model.dtype)
  for c in spec.convs:
    x = _zero_outside(x, h, w)
    x = getattr(model, c.name)(x)
    h, w = _conv_out(h, c), _conv_out(w, c)
    if spec.batch_norm:
      x = getattr(model, model._bn_name(c.name))(x, use_running_average=True)
    x = nnx.relu(x)
    if c.lrn_after:
      x = local_response_norm(x)
    if c.pool_after:
      win, st = spec.pool_window, spec.pool_stride
      x = vgg_max_pool(x, win, st)
      h, w = (h - win) // st + 1, (w - win) // st + 1
  # The head: FC1 a VALID head_window conv (reads only valid features),
  # FC2/FC3 1x1 convs; dropout is off in inference.
  x = nnx.relu(model.fc1(x))
  h, w = h - spec.head_window + 1, w - spec.head_window + 1
  x = nnx.relu(model.fc2(x))
  scores = model.fc3(x)
  rows = jnp.arange(scores.shape[1])[None, :] < h[:, None]
  cols = jnp.arange(scores.shape[2])[None, :] < w[:, None]
  return scores, rows[:, :, None] & cols[:, None, :]


def _flip_within(x: jax.Array, w: jax.Array) -> jax.Array:
  """Mirrors each image's own valid width (the canvas padding stays right)."""
  j = jnp.arange(x.shape[2])[None, :]
  src = jnp.where(j < w[:, None], w[:, None] - 1 - j, j)  # (N, Wc)
  return jnp.take_along_axis(x, src[:, None, :, None], axis=2)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _dense_posteriors(graphdef, convention, state, canvas, hw):
  """(N, classes): mean soft-max of the image and its flip (dense)."""
  model = nnx.merge(graphdef, state)
  x = normalise_on_device(convention, canvas)
  both = jnp.concatenate([x, _flip_within(x, hw[:, 1])])
  scores, valid = masked_score_map(model, both, jnp.concatenate([hw, hw]))
  scores = scores.astype(jnp.float32)
  count = jnp.maximum(valid.sum(axis=(1, 2)), 1)[:, None]
  logits = jnp.where(valid[..., None], scores, 0).sum(axis=(1, 2)) / count
  p = jax.nn.softmax(logits)
  n = canvas.shape[0]
  return (p[:n] + p[n:]) / 2


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _crop_posteriors(graphdef, convention, flip, state, crops):
  """(N, classes): mean soft-max over K crops (and their flips if flip)."""
  model = nnx.merge(graphdef, state)
  n, k = crops.shape[:2]
  x = normalise_on_device(convention, crops.reshape((n * k,) + crops.shape[2:]))
  if flip:
    x = jnp.concatenate([x, x[:, :, ::-1]])
  p = jax.nn.softmax(model(x, train=False))
  p = p.reshape((2 if flip else 1, n, k, -1))
  return p.mean(axis=(0, 2))


# ---------------------------------------------------------------------------
# Batching of single examples into the protocols' device batches.
# ---------------------------------------------------------------------------

def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def dense_bucket(height: int, width: int, step: int) -> tuple[int, int]:
  """Canvas shape for a rescaled image: each side up to a multiple of step."""
  return _round_up(height, step), _round_up(width, step)


class _Runner:
  """Runs device batches of one model; results go to rows of an output."""

  def __init__(self, model, convention, *, mesh=None):
    self.graphdef, state = nnx.split(model)
    self.convention = convention
    devices = jax.local_devices()
    if mesh is not None:
      devices = [d for d in mesh.devices.flat
                 if d.process_index == jax.process_index()]
    self.sharding = None
    self.multiple = len(devices)
    if len(devices) > 1:
      local = jax.sharding.Mesh(np.asarray(devices), ("data",))
      self.sharding = NamedSharding(local, P("data"))
      state = jax.device_put(state, NamedSharding(local, P()))
    self.state = state

  def put(self, x: np.ndarray) -> jax.Array:
    if self.sharding is None:
      return jnp.asarray(x)
    return jax.device_put(x, self.sharding)

  def pad(self, x: np.ndarray, batch: int) -> np.ndarray:
    """Pads the leading axis to a compiled batch size.

    A full batch stays; a partial one (a bucket's last) is padded to the
    next power of two (at most ``batch``), so padding wastes little compute
    and each shape compiles at most log2(batch) + 1 programs.  Sizes are
    multiples of the local devices.
    """
    m = len(x)
    n = batch if m >= batch else min(batch, 1 << max(0, (m - 1).bit_length()))
    n = _round_up(max(n, m), self.multiple)
    if len(x) == n:
      return x
    return np.concatenate([x, np.zeros((n - len(x),) + x.shape[1:], x.dtype)])

  def crops(self, crops: np.ndarray, flip: bool, batch: int) -> np.ndarray:
    n = len(crops)
    out = _crop_posteriors(self.graphdef, self.convention, flip, self.state,
                           self.put(self.pad(crops, batch)))
    return np.asarray(out)[:n]

  def dense(self, canvas: np.ndarray, hw: np.ndarray, batch: int
            ) -> np.ndarray:
    n = len(canvas)
    # Padding rows get a 1x1 "image": masked like any other, then dropped.
    hw = np.concatenate([hw, np.ones((self.pad(canvas, batch).shape[0] - n, 2),
                                     hw.dtype)])
    out = _dense_posteriors(self.graphdef, self.convention, self.state,
                            self.put(self.pad(canvas, batch)),
                            self.put(hw.astype(np.int32)))
    return np.asarray(out)[:n]


class _CropBatcher:
  """centre (1 crop) or multicrop (grid x grid crops + flips) batches."""

  def __init__(self, runner, out, *, kind, crop, grid, batch_size):
    self.runner, self.out, self.kind = runner, out, kind
    self.crop, self.grid, self.batch_size = crop, grid, batch_size
    self.views, self.rows = [], []

  def add(self, row: int, img: np.ndarray):
    from vgg_jax import preprocess
    if self.kind == "centre":
      view = preprocess.center_crop(img, self.crop)[None]
    else:
      view = preprocess.grid_crops(img, self.crop, self.grid)
    self.views.append(view)
    self.rows.append(row)
    if len(self.rows) >= self.batch_size:
      self.flush()

  def flush(self):
    if not self.rows:
      return
    self.out[self.rows] = self.runner.crops(
        np.stack(self.views), self.kind == "multicrop", self.batch_size)
    self.views, self.rows = [], []


class _DenseBatcher:
  """Shape buckets of whole rescaled images, run as masked canvases."""

  def __init__(self, runner, out, *, bucket_step, batch_size,
               max_pending=None):
    self.runner, self.out = runner, out
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
    self.out[[r for r, _ in items]] = self.runner.dense(canvas, hw,
                                                        self.batch_size)

  def flush(self):
    for key in list(self.buckets):
      self._run(key)


# ---------------------------------------------------------------------------
# A split: every example once, at several scales, under several protocols.
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class SplitPosteriors:
  """Soft-max posteriors of one model for every example of a split.

  ``posteriors[f"{part}@{Q}"]`` is (N, classes) float32 for part in
  {"centre", "dense", "multicrop"}; rows of examples that could not be
  decoded are NaN (they count as errors).  ``names[i]``/``labels[i]``
  identify example i (its position in the split).
  """
  names: np.ndarray
  labels: np.ndarray
  posteriors: dict[str, np.ndarray]
  failed: dict[str, str]  # name -> reason, images that could not be decoded
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def num_examples(self) -> int:
    return len(self.labels)

  def save(self, path: str | os.PathLike) -> pathlib.Path:
    """Writes an .npz (atomically): names, labels, posteriors, failures."""
    path = pathlib.Path(path)
    arrays = {"names": self.names.astype(str), "labels": self.labels,
              "failed_names": np.asarray(list(self.failed), str),
              "failed_reasons": np.asarray(list(self.failed.values()), str),
              "meta": np.asarray(json.dumps(self.meta))}
    for key, value in self.posteriors.items():
      arrays["posteriors/" + key] = value
    _atomic_write(path, lambda f: np.savez(f, **arrays))
    return path

  @classmethod
  def load(cls, path: str | os.PathLike) -> "SplitPosteriors":
    path = pathlib.Path(path)
    if not path.is_file():
      raise FileNotFoundError(f"posteriors file {path} does not exist (write "
                              "one with `python -m vgg_jax.evaluate ... "
                              "--save-posteriors`)")
    with np.load(path, allow_pickle=False) as z:
      missing = {"names", "labels", "meta"} - set(z.files)
      if missing:
        raise ValueError(f"{path} is not a vgg_jax posteriors file (missing "
                         f"{sorted(missing)})")
      posteriors = {k[len("posteriors/"):]: z[k] for k in z.files
                    if k.startswith("posteriors/")}
      failed = dict(zip(z["failed_names"].tolist(),
                        z["failed_reasons"].tolist()))
      return cls(z["names"], z["labels"], posteriors, failed,
                 json.loads(str(z["meta"])))


def _atomic_write(path: pathlib.Path, write) -> None:
  """Writes via a temporary file in the same folder, then renames."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name,
                             suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def scale_posteriors(model, examples: Iterable[Mapping[str, Any]], *,
                     num_examples: int, convention, parts=("dense",),
                     crop_size: int = 224, grid: int = 5,
                     batch_size: int = 8, bucket_step: int = 32,
                     mesh=None, limit: int | None = None
                     ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray,
                                dict[str, str]]:
  """Posteriors at one scale of every example of a (sharded) split.

  Args:
    model: the net.
    examples: this process's stream of single examples {"image": uint8
      (H, W, C) already rescaled to Q, "label", "index" (-1: padding),
      "name", "mask", "decode_error": "" or the reason}, as yielded by
      ``input_pipeline.create_eval_iterator(..., batch=False)``.
    num_examples: N, the size of the split.
    convention: the model's InputConvention (applied on device).
    parts: any of "centre", "dense", "multicrop".
    crop_size, grid: the crops (the model's training crop; 5x5 grid).
    batch_size: images per device batch (multicrop runs 2*grid^2 crops per
      image).
    bucket_step: dense canvases round each side up to a multiple of this.
    mesh: devices to split batches over (this process's devices of it);
      default all local devices.
    limit: only examples with index < limit (a quick look at a split).
  Returns:
    (posteriors {part: (n, classes) float32, NaN for decode failures},
     names (n,), labels (n,), failed {name: reason}) with n = min(N, limit),
    rows in split order, gathered from all processes.
  """
  unknown = set(parts) - {"centre", "dense", "multicrop"}
  if unknown:
    raise ValueError(f"unknown parts {sorted(unknown)}")
  n = num_examples if limit is None else min(num_examples, limit)
  runner = _Runner(model, convention, mesh=mesh)
  num_classes = model.num_classes
  local_rows: list[tuple[int, int, str]] = []  # (index, label, name)
  outs = {p: np.full((0, num_classes), np.nan, np.float32) for p in parts}
  capacity = 0
  batchers = {}

  def grow(rows_needed):
    nonlocal capacity
    if rows_needed <= capacity:
      return
    capacity = max(2 * capacity, rows_needed, 64)
    for p in parts:
      new = np.full((capacity, num_classes), np.nan, np.float32)
      new[:len(outs[p])] = outs[p]
      outs[p] = new
      if p in batchers:
        batchers[p].out = new

  grow(64)
  for p in parts:
    if p == "dense":
      batchers[p] = _DenseBatcher(runner, outs[p], bucket_step=bucket_step,
                                  batch_size=batch_size)
    else:
      batchers[p] = _CropBatcher(runner, outs[p], kind=p, crop=crop_size,
                                 grid=grid, batch_size=batch_size)
  failed = {}
  pc = jax.process_count()
  # With one example per process per step, process p's j-th example is
  # split position j * pc + p: past ceil(limit / pc) nothing is < limit.
  local_limit = None if limit is None else -(-limit // pc)
  for j, ex in enumerate(examples):
    if local_limit is not None and j >= local_limit:
      break
    index = int(ex["index"])
    if index < 0 or index >= n:  # padding, or beyond the limit
      continue
    row = len(local_rows)
    local_rows.append((index, int(ex["label"]), str(ex["name"])))
    grow(row + 1)
    if ex.get("decode_error"):
      failed[str(ex["name"])] = str(ex["decode_error"])
      continue
    img = np.asarray(ex["image"])
    if img.ndim == 2:
      img = img[..., None]
    for p in parts:
      # Flushes write into outs[p] through the batcher's reference.
      batchers[p].add(row, img)
  for p in parts:
    batchers[p].flush()
  m = len(local_rows)
  index = np.asarray([r[0] for r in local_rows], np.int64)
  labels = np.asarray([r[1] for r in local_rows], np.int64)
  names = np.asarray([r[2] for r in local_rows], str)
  local = {p: outs[p][:m] for p in parts}
  if pc > 1:
    index, labels, names, local, failed = _gather_processes(
        index, labels, names, local, failed)
  counts = np.bincount(index, minlength=n)
  if len(counts) != n or np.any(counts != 1):
    missing = np.nonzero(counts == 0)[0][:10].tolist()
    doubled = np.nonzero(counts > 1)[0][:10].tolist()
    raise RuntimeError(
        f"every example must be evaluated exactly once: missing positions "
        f"{missing}, repeated {doubled} (of {n}); the evaluation iterator "
        "did not cover the split")
  order = np.argsort(index)
  return ({p: v[order] for p, v in local.items()}, names[order],
          labels[order], failed)


def _gather_processes(index, labels, names, local, failed):
  """All processes' rows, so that every process holds the whole split."""
  from jax.experimental import multihost_utils
  m = len(index)
  size = int(np.max(multihost_utils.process_allgather(np.int64(m))))

  def gather(x, fill):
    pad = np.full((size - len(x),) + x.shape[1:], fill, x.dtype)
    g = np.asarray(multihost_utils.process_allgather(np.concatenate([x, pad])))
    return g.reshape((-1,) + x.shape[1:])

  valid = gather(np.ones((m,), np.int32), 0) == 1
  index = gather(index, -1)[valid]
  labels = gather(labels, -1)[valid]
  # Strings travel as fixed-width bytes.
  width = int(np.max(multihost_utils.process_allgather(
      np.int64(max([len(s.encode()) for s in names] + [1])))))
  enc = np.zeros((m, width), np.uint8)
  for i, s in enumerate(names):
    b = s.encode()
    enc[i, :len(b)] = np.frombuffer(b, np.uint8)
  names = np.asarray([bytes(r).rstrip(b"\0").decode()
                      for r in gather(enc, 0)[valid]], str)
  local = {p: gather(v, np.nan)[valid] for p, v in local.items()}
  failed_all = {}
  # Decode failures are rows that are NaN in every part and whose name some
  # process recorded; share the reasons as JSON text.
  text = json.dumps(failed).encode()
  width = int(np.max(multihost_utils.process_allgather(np.int64(len(text)))))
  buf = np.zeros((width,), np.uint8)
  buf[:len(text)] = np.frombuffer(text, np.uint8)
  for row in np.asarray(multihost_utils.process_allgather(buf)).reshape(
      -1, width):
    failed_all.update(json.loads(bytes(row).rstrip(b"\0").decode() or "{}"))
  return index, labels, names, local, failed_all


def protocol_parts(protocol: str) -> tuple[str, ...]:
  protocol = "centre" if protocol == "center" else protocol
  if protocol not in PROTOCOL_PARTS:
    raise ValueError(f"unknown protocol {protocol!r}; expected one of "
                     f"{', '.join(PROTOCOLS)}")
  return PROTOCOL_PARTS[protocol]


def paper_scales(train_scale, *, single: bool = False) -> list[int]:
  """The paper's test scales Q for a training scale S (§3.2, Tables 3-4).

  Fixed S: {S-32, S, S+32} (single: S).  Jittered [S_min, S_max]:
  {S_min, (S_min+S_max)/2, S_max} (single: the middle one).
  """
  if isinstance(train_scale, (int, np.integer)):
    s = int(train_scale)
    return [s] if single else [s - 32, s, s + 32]
  lo, hi = (int(v) for v in train_scale)
  mid = (lo + hi) // 2
  return [mid] if single else [lo, mid, hi]


def check_scales(scales, crop_size: int, what: str = "the model") -> list[int]:
  scales = [int(q) for q in scales]
  if not scales:
    raise ValueError("no test scales given")
  small = [q for q in scales if q < crop_size]
  if small:
    raise ValueError(
        f"test scales {small} are smaller than {what}'s {crop_size}x"
        f"{crop_size} training crop; the shorter side Q must be >= "
        f"{crop_size} (the paper uses Q >= 224)")
  return scales


def evaluate_model(model, data_cfg, *, convention, scales,
                   protocol: str = "dense", split: str | None = None,
                   crop_size: int | None = None, batch_size: int = 8,
                   bucket_step: int = 32, mesh=None,
                   limit: int | None = None, meta=None) -> SplitPosteriors:
  """Posteriors of ``model`` on a split at every Q of ``scales``.

  Reads the split with ``input_pipeline.create_eval_iterator(...,
  batch=False)`` (decoded, rescaled to Q, sharded over processes, padded),
  one pass per scale, computing every part the protocol needs from the same
  rescaled image.
  """
  from vgg_jax import input_pipeline
  parts = protocol_parts(protocol)
  crop_size = int(crop_size or data_cfg.crop_size)
  scales = check_scales(scales, crop_size)
  posteriors, names, labels, failed = {}, None, None, {}
  for q in scales:
    pc = jax.process_count()
    examples = input_pipeline.create_eval_iterator(
        data_cfg, split=split, global_batch_size=pc,
        input_convention=convention, protocol="dense", scale=q, batch=False)
    it = iter(examples)
    try:
      post, names_q, labels_q, failed_q = scale_posteriors(
          model, it, num_examples=examples.num_examples,
          convention=convention, parts=parts, crop_size=crop_size,
          grid=int(data_cfg.get("multicrop_grid", 5)),
          batch_size=batch_size, bucket_step=bucket_step, mesh=mesh,
          limit=limit)
    finally:
      close = getattr(it, "close", None)
      if close is not None:
        close()
    if names is None:
      names, labels = names_q, labels_q
    elif not np.array_equal(names, names_q):
      raise RuntimeError(f"the split's order changed between scales (at "
                         f"Q={q}); evaluation needs a deterministic order")
    failed.update(failed_q)
    for p, v in post.items():
      posteriors[f"{p}@{q}"] = v
  return SplitPosteriors(names, labels, posteriors, failed,
                         dict(meta or {}, scales=scales, protocol=protocol,
                              num_split_examples=int(
                                  examples.num_examples)))


def combine(results: list[SplitPosteriors], protocol: str,
            scales: list[list[int]] | list[int] | None = None) -> np.ndarray:
  """The posterior of a protocol: mean over parts, scales and models.

  ``scales``: one list for every model, or a list per model; None uses each
  model's stored scales.  Rows that are NaN in any model (decode failures)
  stay NaN.
  """
  parts = protocol_parts(protocol)
  if not results:
    raise ValueError("no models to combine")
  first = results[0]
  per_model = []
  for i, r in enumerate(results):
    if not np.array_equal(r.names, first.names) or not np.array_equal(
        r.labels, first.labels):
      raise ValueError(
          f"model {i} was evaluated on different examples than model 0 (names"
          " or labels differ); an ensemble needs the same split")
    qs = scales
    if qs is None:
      qs = r.meta.get("scales")
    elif qs and isinstance(qs[0], (list, tuple)):
      qs = qs[i]
    part_means = []
    for p in parts:
      keys = [f"{p}@{int(q)}" for q in qs]
      missing = [k for k in keys if k not in r.posteriors]
      if missing:
        raise ValueError(
            f"model {i} has no posteriors for {missing} (has "
            f"{sorted(r.posteriors)}); evaluate it with that protocol and "
            "those scales")
      part_means.append(np.mean([r.posteriors[k] for k in keys], axis=0))
    per_model.append(np.mean(part_means, axis=0))
  return np.mean(per_model, axis=0)


def errors_of(posteriors: np.ndarray, labels: np.ndarray
              ) -> dict[str, float | int]:
  """Top-1/top-5 error; NaN rows (undecodable images) count as errors."""
  labels = np.asarray(labels)
  ok = ~np.isnan(posteriors).any(axis=1)
  k = min(TOP_K, posteriors.shape[1])
  safe = np.where(ok[:, None], posteriors, 0)
  top = np.argsort(-safe, axis=1, kind="stable")[:, :k]
  hit = (top == labels[:, None]) & ok[:, None]
  n = len(labels)
  if n == 0:
    raise ValueError("no examples")
  return {"top1_error": float(1 - hit[:, 0].sum() / n),
          "top5_error": float(1 - hit.any(axis=1).sum() / n),
          "num_examples": int(n), "num_failed": int((~ok).sum())}


# ---------------------------------------------------------------------------
# Models from directories, checked before any compute.
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class LoadedModel:
  """A net, its input convention and what evaluation needs to know of it."""
  path: str
  model: Any
  metadata: dict
  convention: Any
  crop_size: int
  train_scale: Any  # S (int), [S_min, S_max], or None if unknown

  @property
  def label(self) -> str:
    m = self.metadata["model"]
    return str(m.get("name"))


def _training_config(path: pathlib.Path) -> dict:
  cfg = path / "config.json"
  if cfg.is_file():
    try:
      return json.loads(cfg.read_text())
    except json.JSONDecodeError:
      return {}
  return {}


def load_model(path: str | os.PathLike, *, expect_name: str | None = None,
               crop_size: int | None = None, step: int | None = None,
               best: bool = False, dtype: Any = None) -> LoadedModel:
  """A model dir: imported weights (``vgg_jax.weights``) or a training workdir.

  Checks, before anything is computed: the net is the one asked for
  (``expect_name``), the directory carries an input convention, and the
  training crop fits the net's head (FC1 must see exactly head_window^2).
  ``step``/``best`` pick a workdir's checkpoint (default: the latest);
  ``dtype`` is the compute dtype (e.g. jnp.bfloat16; weights stay f32).
  """
  from vgg_jax import conventions as conventions_lib
  from vgg_jax import weights
  from vgg_jax.models import canonical_name, net_spec, output_size
  p = pathlib.Path(path)
  if (p / weights.METADATA_FILE).is_file():
    model, meta = weights.load_pretrained(p, dtype=dtype)
  elif (p / "checkpoints").is_dir():
    from vgg_jax import checkpointing
    model, meta = checkpointing.load_model_from_workdir(p, step=step,
                                                        best=best, dtype=dtype)
  else:
    raise FileNotFoundError(
        f"{path} is neither imported weights (a directory with metadata.json,"
        " written by `python -m vgg_jax.weights`) nor a training workdir "
        "(with checkpoints/, written by `python -m vgg_jax.main`)")
  if not meta.get("input_convention"):
    raise ValueError(
        f"{path} carries no input convention (channel order, scale, mean, "
        "std); without it its inputs cannot be preprocessed.  Re-export the "
        "weights with vgg_jax.weights.save_pretrained(input_convention=...)")
  convention = conventions_lib.InputConvention.from_dict(
      meta["input_convention"])
  name = meta["model"]["name"]
  if expect_name is not None and canonical_name(expect_name) != canonical_name(
      name):
    raise ValueError(
        f"{path} holds net {canonical_name(name)!r}, but "
        f"{canonical_name(expect_name)!r} was asked for (--arch); pass the "
        "right directory or --arch")
  cfg = _training_config(p)
  data = cfg.get("data", {}) if isinstance(cfg, dict) else {}
  train_scale = meta.get("train_scale", data.get("train_scale"))
  crop = crop_size or meta.get("crop_size") or data.get("crop_size")
  spec = net_spec(name, **{k: meta["model"][k] for k in
                           ("width_mult", "fc_width", "head_window")
                           if meta["model"].get(k) is not None})
  if crop is None:  # the smallest input whose score map is 1x1
    crop = next(s for s in range(1, 2048)
                if output_size(spec, s) >= spec.head_window)
  crop = int(crop)
  if output_size(spec, crop) - spec.head_window + 1 != 1:
    raise ValueError(
        f"{path}: net {name} with head window {spec.head_window} gives a "
        f"{output_size(spec, crop) - spec.head_window + 1}-wide score map on "
        f"a {crop}x{crop} crop, not 1x1: the crop size does not match the "
        "net (pass --crop-size)")
  if isinstance(train_scale, list):
    train_scale = [int(v) for v in train_scale]
  return LoadedModel(str(path), model, meta, convention, crop, train_scale)


def check_compatible(loaded: LoadedModel, info, *, data_desc: str) -> None:
  """Classes and channels of the model against the dataset's."""
  m = loaded.metadata["model"]
  classes = int(m.get("num_classes", 1000))
  if classes != info.num_classes:
    raise ValueError(
        f"{loaded.path} predicts {classes} classes but {data_desc} has "
        f"{info.num_classes}: the model was not trained on this dataset")
  names = loaded.metadata.get("class_names")
  if names and info.class_names and list(names) != list(info.class_names):
    diff = [(i, a, b) for i, (a, b) in enumerate(zip(names,
                                                     info.class_names))
            if a != b][:3]
    raise ValueError(
        f"{loaded.path}'s class names differ from {data_desc}'s (first "
        f"differences (index, model, data): {diff}); labels would be "
        "compared against the wrong classes")
  channels = int(m.get("in_channels", 3))
  if channels != info.image_channels:
    raise ValueError(
        f"{loaded.path} takes {channels}-channel images but {data_desc} "
        f"gives {info.image_channels} (data.image_channels)")


# ---------------------------------------------------------------------------
# The report: a table laid out like the paper's Tables 3-6.
# ---------------------------------------------------------------------------

METHOD_NAMES = {"centre": "centre crop", "dense": "dense",
                "multicrop": "multi-crop",
                "dense+multicrop": "multi-crop & dense"}


def _fmt_scale(s) -> str:
  if s is None:
    return "?"
  if isinstance(s, (list, tuple)):
    return f"[{s[0]};{s[1]}]"
  return str(s)


def report_table(rows: list[dict]) -> str:
  """Markdown table: ConvNet | train S | test Q | method | top-1 | top-5."""
  lines = ["| ConvNet config. | train (S) | test (Q) | method | "
           "top-1 val. error (%) | top-5 val. error (%) |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['net']} | {_fmt_scale(r['train_scale'])} | "
        f"{','.join(str(q) for q in r['scales'])} | "
        f"{METHOD_NAMES.get(r['protocol'], r['protocol'])} | "
        f"{100 * r['top1_error']:.1f} | {100 * r['top5_error']:.1f} |")
  return "\n".join(lines)


def build_report(results: list[SplitPosteriors], protocol: str,
                 scales_per_model: list[list[int]], *, split_desc: str
                 ) -> dict[str, Any]:
  rows = []
  for r, qs in zip(results, scales_per_model):
    err = errors_of(combine([r], protocol, [qs]), r.labels)
    rows.append({"net": r.meta.get("net", "?"), "model": r.meta.get("path"),
                 "train_scale": r.meta.get("train_scale"), "scales": qs,
                 "protocol": protocol, **err})
  if len(results) > 1:
    err = errors_of(combine(results, protocol, scales_per_model),
                    results[0].labels)
    all_q = sorted({q for qs in scales_per_model for q in qs})
    rows.append({"net": " & ".join(r["net"] for r in rows) + " (ensemble)",
                 "model": None, "train_scale": None, "scales": all_q,
                 "protocol": protocol, **err})
  failed = {}
  for r in results:
    failed.update(r.failed)
  first = results[0]
  return {
      "split": split_desc, "protocol": protocol,
      "num_examples": first.num_examples,
      "num_split_examples": first.meta.get("num_split_examples",
                                           first.num_examples),
      "num_evaluated": first.num_examples - len(failed),
      "num_failed": len(failed),
      "failed": [{"name": k, "reason": v} for k, v in sorted(failed.items())],
      "rows": rows,
  }


def report_markdown(report: dict[str, Any]) -> str:
  lines = [f"# Evaluation: {report['split']}", "",
           report_table(report["rows"]), "",
           f"Examples: {report['num_examples']} of "
           f"{report['num_split_examples']} in the split; "
           f"{report['num_evaluated']} evaluated, {report['num_failed']} "
           "could not be decoded (counted as errors)."]
  if report["failed"]:
    lines += ["", "Could not be decoded:"]
    lines += [f"- {f['name']}: {f['reason']}" for f in report["failed"]]
  return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], output: str | os.PathLike) -> None:
  output = pathlib.Path(output)
  text = json.dumps(report, indent=2) + "\n"
  _atomic_write(output / "results.json", lambda f: f.write(text.encode()))
  md = report_markdown(report)
  _atomic_write(output / "results.md", lambda f: f.write(md.encode()))


# ---------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------

def _parse_scales(text: str | None, loaded: LoadedModel) -> list[int]:
  if text and text not in ("paper", "paper-single"):
    try:
      return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
      raise ValueError(f"--scales takes comma-separated integers, 'paper' "
                       f"or 'paper-single', got {text!r}") from None
  if loaded.train_scale is None:
    raise ValueError(
        f"{loaded.path} does not record its training scale S, so the paper's "
        "test scales cannot be derived: pass --scales (e.g. 256,384,512)")
  return paper_scales(loaded.train_scale, single=text == "paper-single")


def _data_config(args):
  from vgg_jax import input_pipeline
  cfg = input_pipeline.default_data_config(args.data)
  if args.data_name:
    cfg.name = args.data_name
  if args.data_dir:
    cfg.data_dir = args.data_dir
  if args.split:
    cfg.eval_split = args.split
  cfg.num_threads = args.num_threads
  return cfg


def build_parser():
  import argparse
  p = argparse.ArgumentParser(
      prog="python -m vgg_jax.evaluate",
      description="Top-1/top-5 error under the paper's test protocols "
      "(§3.2): centre, dense, multicrop, dense+multicrop; several scales; "
      "ensembles of several models.")
  p.add_argument("--model", action="append", default=[],
                 help="a training workdir or an imported-weights directory; "
                 "repeat for an ensemble")
  p.add_argument("--arch", action="append", default=[],
                 help="the net each --model must be (e.g. D); an error if "
                 "the directory holds another")
  p.add_argument("--from-posteriors", nargs="+", default=[],
                 help="saved posteriors (.npz from --save-posteriors) to "
                 "combine instead of evaluating models")
  p.add_argument("--data", default="tfds",
                 choices=("tfds", "folder", "fashion_mnist"))
  p.add_argument("--data-name", default=None,
                 help="TFDS name (default imagenet2012)")
  p.add_argument("--data-dir", default=None,
                 help="TFDS data_dir, or the folder root")
  p.add_argument("--split", default=None, help="default: the eval split")
  p.add_argument("--protocol", default="dense", choices=PROTOCOLS)
  p.add_argument("--scales", default="paper",
                 help="test scales Q, e.g. 256,384,512; 'paper' (default): "
                 "{S-32,S,S+32} for fixed S, {S_min,mid,S_max} for jittered; "
                 "'paper-single': Q=S, or the middle for jittered (Table 3)")
  p.add_argument("--step", type=int, default=None,
                 help="workdirs: evaluate this checkpoint step")
  p.add_argument("--best", action="store_true",
                 help="workdirs: the checkpoint with the best validation "
                 "top-1 (default: the latest)")
  p.add_argument("--dtype", default="float32",
                 choices=("float32", "bfloat16", "float16"),
                 help="compute dtype (weights stay float32); the paper's "
                 "numbers are float32")
  p.add_argument("--crop-size", type=int, default=None,
                 help="the models' training crop (default: from the model)")
  p.add_argument("--batch-size", type=int, default=8,
                 help="images per device step")
  p.add_argument("--bucket-step", type=int, default=32,
                 help="dense canvases: sides rounded up to this multiple")
  p.add_argument("--limit", type=int, default=None,
                 help="only the first N examples of the split")
  p.add_argument("--num-threads", type=int, default=8,
                 help="decoding threads")
  p.add_argument("--output", default="eval_results",
                 help="folder for results.json, results.md, posteriors")
  p.add_argument("--save-posteriors", action="store_true",
                 help="write per-image posteriors (npz, with names) per model")
  return p


def main(argv=None) -> dict[str, Any]:
  args = build_parser().parse_args(argv)
  protocol = args.protocol
  parts = protocol_parts(protocol)
  if bool(args.model) == bool(args.from_posteriors):
    raise SystemExit("give --model DIR (one or more) or --from-posteriors "
                     "FILE..., not both")
  output = pathlib.Path(args.output)
  results, scales_per_model = [], []
  if args.from_posteriors:
    for path in args.from_posteriors:
      r = SplitPosteriors.load(path)
      qs = (r.meta["scales"] if args.scales in ("paper", "paper-single", None)
            else [int(v) for v in args.scales.split(",")])
      results.append(r)
      scales_per_model.append(qs)
    split_desc = results[0].meta.get("split_desc", "?")
    combine(results, protocol, scales_per_model)  # checks before reporting
  else:
    from vgg_jax import input_pipeline
    if args.arch and len(args.arch) not in (1, len(args.model)):
      raise SystemExit("give one --arch for all models or one per --model")
    archs = (args.arch * len(args.model) if len(args.arch) == 1
             else args.arch or [None] * len(args.model))
    data_cfg = _data_config(args)
    info = input_pipeline.dataset_info(data_cfg)
    split = data_cfg.eval_split
    split_desc = f"{args.data}:{data_cfg.name or data_cfg.data_dir}/{split}"
    # Everything is loaded and checked before the first image is evaluated.
    loaded = []
    for path, arch in zip(args.model, archs):
      m = load_model(path, expect_name=arch, crop_size=args.crop_size,
                     step=args.step, best=args.best,
                     dtype=None if args.dtype == "float32"
                     else jnp.dtype(args.dtype))
      check_compatible(m, info, data_desc=split_desc)
      qs = check_scales(_parse_scales(args.scales, m), m.crop_size,
                        f"{path}")
      loaded.append(m)
      scales_per_model.append(qs)
    for m, qs in zip(loaded, scales_per_model):
      meta = {"path": m.path, "net": m.label, "train_scale": m.train_scale,
              "model": m.metadata["model"], "split_desc": split_desc,
              "crop_size": m.crop_size}
      r = evaluate_model(m.model, data_cfg, convention=m.convention,
                         scales=qs, protocol=protocol, split=split,
                         crop_size=m.crop_size, batch_size=args.batch_size,
                         bucket_step=args.bucket_step, limit=args.limit,
                         meta=meta)
      results.append(r)
      if args.save_posteriors and jax.process_index() == 0:
        r.save(output / f"posteriors_{len(results) - 1}_{m.label}.npz")
  report = build_report(results, protocol, scales_per_model,
                        split_desc=split_desc)
  report["parts"] = list(parts)
  if jax.process_index() == 0:
    write_report(report, output)
    print(report_markdown(report))
    print(f"wrote {output / 'results.json'} and {output / 'results.md'}")
  return report


if __name__ == "__main__":
  import sys
  try:
    main()
  except (ValueError, FileNotFoundError, RuntimeError) as e:
    sys.exit(f"error: {e}")
