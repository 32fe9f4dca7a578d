"""The paper's test protocols (§3.2) over a whole split.

* centre: rescale to Q, the central crop (the torchvision/Keras way).
* dense: the fully-convolutional net on the whole rescaled image; the class
  score map averaged over positions, soft-max, averaged with the flipped
  image's (the dense engine, eval/dense.py).
* multicrop: per Q the 5x5 grid of crops and their flips (50 crops),
  soft-max averaged.
* dense+multicrop: the mean of the two posteriors.
* several Q: posteriors averaged over Q; several models: averaged over
  models (eval/posteriors.combine).

``scale_posteriors`` computes every part at one Q from one decoded,
rescaled image; ``evaluate_model`` runs a split at several Q.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import jax
import numpy as np

from vgg_jax import progress as progress_lib
from vgg_jax import watchdog
from vgg_jax import sharding as sharding_lib
from vgg_jax.eval import dense as dense_lib

from vgg_jax.eval.posteriors import (PROTOCOL_PARTS, PROTOCOLS,
                                     SplitPosteriors, protocol_parts)

__all__ = ["PROTOCOLS", "PROTOCOL_PARTS", "protocol_parts", "paper_scales",
           "check_scales", "scale_posteriors", "evaluate_model"]


def scale_posteriors(model, examples: Iterable[Mapping[str, Any]], *,
                     num_examples: int, convention, parts=("dense",),
                     crop_size: int = 224, grid: int = 5,
                     batch_size: int = 8, bucket_step: int = 32,
                     mesh=None, limit: int | None = None,
                     output: dense_lib.DenseOutput = dense_lib.CLASS_POSTERIORS,
                     progress: progress_lib.Progress | None = None
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
    parts: any of "centre", "dense", "multicrop", "tencrop".
    crop_size, grid: the crops (the model's training crop; 5x5 grid).
    batch_size: images per device batch (multicrop runs 2*grid^2 crops per
      image).
    bucket_step: dense canvases round each side up to a multiple of this.
    mesh: devices to split batches over (this process's devices of it);
      default all local devices.
    limit: only examples with index < limit (a quick look at a split).
    output: what the dense engine computes per image (default the class
      posteriors; ``dense.PooledDescriptor`` for Appendix B's descriptors).
    progress: advanced by one per example this process reads.
  Returns:
    (outputs {part: (n, width) float32, NaN for decode failures},
     names (n,), labels (n,), failed {name: reason}) with n = min(N, limit),
    rows in split order, gathered from all processes.
  """
  unknown = set(parts) - {"centre", "dense", "multicrop", "tencrop"}
  if unknown:
    raise ValueError(f"unknown parts {sorted(unknown)}")
  n = num_examples if limit is None else min(num_examples, limit)
  engine = dense_lib.DenseEngine(model, convention, output, mesh=mesh)
  width = engine.width
  local_rows: list[tuple[int, int, str]] = []  # (index, label, name)
  outs = {p: np.full((64, width), np.nan, np.float32) for p in parts}

  def sink_of(part):
    def sink(rows, values):
      outs[part][rows] = values
    return sink

  def grow(rows_needed):
    for p in parts:
      if rows_needed > len(outs[p]):
        new = np.full((max(2 * len(outs[p]), rows_needed), width), np.nan,
                      np.float32)
        new[:len(outs[p])] = outs[p]
        outs[p] = new

  batchers = {p: dense_lib.make_batcher(
      p, engine, sink_of(p), crop=crop_size, grid=grid,
      batch_size=batch_size, bucket_step=bucket_step) for p in parts}
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
    if progress is not None:
      progress.update(1)
    watchdog.heartbeat("the next evaluation example")
    if ex.get("decode_error"):
      failed[str(ex["name"])] = str(ex["decode_error"])
      continue
    img = np.asarray(ex["image"])
    if img.ndim == 2:
      img = img[..., None]
    for p in parts:
      batchers[p].add(row, img)
  for p in parts:
    batchers[p].flush()
  m = len(local_rows)
  index = np.asarray([r[0] for r in local_rows], np.int64)
  labels = np.asarray([r[1] for r in local_rows], np.int64)
  names = np.asarray([r[2] for r in local_rows], str)
  local = {p: outs[p][:m] for p in parts}
  if pc > 1:
    # Every process ends with the whole split.
    g = sharding_lib.allgather_rows(
        {"index": index, "labels": labels, **{"out/" + p: v
                                              for p, v in local.items()}},
        {"index": -1, "labels": -1, **{"out/" + p: np.nan for p in local}})
    index, labels = g["index"], g["labels"]
    local = {p: g["out/" + p] for p in local}
    names = np.asarray(sharding_lib.allgather_strings(list(names)), str)
    merged = {}
    for f in sharding_lib.allgather_json(failed):
      merged.update(f or {})
    failed = merged
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
                   limit: int | None = None, meta=None,
                   output: dense_lib.DenseOutput = dense_lib.CLASS_POSTERIORS,
                   show_progress: bool = True) -> SplitPosteriors:
  """Posteriors of ``model`` on a split at every Q of ``scales``.

  Reads the split with ``input_pipeline.create_eval_iterator(...,
  batch=False)`` (decoded, rescaled to Q, sharded over processes, padded),
  one pass per scale, computing every part the protocol needs from the same
  rescaled image.  Progress (images done / total, img/s, ETA) is shown while
  it runs (``vgg_jax.progress``).
  """
  from vgg_jax import input_pipeline
  parts = protocol_parts(protocol)
  crop_size = int(crop_size or data_cfg.crop_size)
  scales = check_scales(scales, crop_size)
  posteriors, names, labels, failed = {}, None, None, {}
  bar = None
  for q in scales:
    pc = jax.process_count()
    examples = input_pipeline.create_eval_iterator(
        data_cfg, split=split, global_batch_size=pc,
        input_convention=convention, protocol="dense", scale=q, batch=False)
    if bar is None and show_progress:
      n = examples.num_examples if limit is None else min(
          limit, examples.num_examples)
      bar = progress_lib.Progress(
          n * len(scales), desc=f"evaluate ({protocol}, Q={scales})",
          unit="images", per_process=True)
    it = iter(examples)
    try:
      post, names_q, labels_q, failed_q = scale_posteriors(
          model, it, num_examples=examples.num_examples,
          convention=convention, parts=parts, crop_size=crop_size,
          grid=int(data_cfg.get("multicrop_grid", 5)),
          batch_size=batch_size, bucket_step=bucket_step, mesh=mesh,
          limit=limit, output=output, progress=bar)
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
  if bar is not None:
    bar.close()
  return SplitPosteriors(names, labels, posteriors, failed,
                         dict(meta or {}, scales=scales, protocol=protocol,
                              num_split_examples=int(
                                  examples.num_examples)))


