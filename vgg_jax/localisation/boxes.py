"""Bounding boxes for the paper's localisation (Appendix A): overlap, the
regression target, the training crop's effect, OverFeat's greedy merge.

Box convention (everywhere in ``vgg_jax.localisation``): a box is
``(xmin, ymin, xmax, ymax)`` in pixels with INCLUSIVE ends, the ILSVRC devkit's
convention: the box covers pixel columns ``xmin..xmax``, so its width is
``xmax - xmin + 1``.  The devkit's ``compute_overlap.m`` (ILSVRC-2012
development kit, ``evaluation/``) computes the overlap of a prediction ``bb``
with a ground-truth box ``bbgt`` as::

    iw = min(bb.xmax, bbgt.xmax) - max(bb.xmin, bbgt.xmin) + 1
    ih = min(bb.ymax, bbgt.ymax) - max(bb.ymin, bbgt.ymin) + 1
    if iw > 0 and ih > 0:
        ua = (bb.xmax-bb.xmin+1)*(bb.ymax-bb.ymin+1)
             + (bbgt.xmax-bbgt.xmin+1)*(bbgt.ymax-bbgt.ymin+1) - iw*ih
        ov = iw*ih/ua
    else:
        ov = -1

:func:`iou` is that formula (returning 0 instead of -1 where the boxes do not
meet; every threshold test gives the same answer).  Coordinates may be
fractional (decoded predictions); the "+1" then reads as "a box from ``xmin``
to ``xmax`` covers the continuous interval ``[xmin, xmax + 1)``", which is the
continuous frame used below for centres, rescaling and the regression target:
pixel ``i`` covers ``[i, i + 1)``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

# The regression target's normalisations (Appendix A.1 leaves it open; both
# are measured on the synthetic CPU experiment, see docs/localisation.md).
NORMALISATIONS = ("crop_fraction", "centred_log")


def as_boxes(boxes) -> np.ndarray:
  """``boxes`` as a float64 array of shape (..., 4); clear error otherwise."""
  arr = np.asarray(boxes, dtype=np.float64)
  if arr.ndim == 0 or arr.shape[-1] != 4:
    raise ValueError(f"boxes must have shape (..., 4) as (xmin, ymin, xmax, "
                     f"ymax); got shape {arr.shape}")
  return arr


def box_area(boxes) -> np.ndarray:
  """Inclusive-end area ``(xmax - xmin + 1) * (ymax - ymin + 1)``; 0 if empty."""
  b = as_boxes(boxes)
  w = np.maximum(b[..., 2] - b[..., 0] + 1, 0)
  h = np.maximum(b[..., 3] - b[..., 1] + 1, 0)
  return w * h


def intersection(a, b) -> np.ndarray:
  """Inclusive-end intersection area of broadcast boxes ``a`` and ``b``."""
  a, b = as_boxes(a), as_boxes(b)
  iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1
  ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1
  return np.where((iw > 0) & (ih > 0), iw * ih, 0.0)


def iou(a, b) -> np.ndarray:
  """Intersection over union in the ILSVRC devkit convention (module doc).

  ``a`` and ``b`` broadcast against each other (shapes (..., 4)).  Boxes that
  do not meet give 0 (the devkit's -1; both fail any threshold >= 0).
  """
  inter = intersection(a, b)
  union = box_area(a) + box_area(b) - inter
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(inter > 0, inter / np.where(union > 0, union, 1), 0.0)


def iou_matrix(a, b) -> np.ndarray:
  """(N, M) IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4)."""
  a, b = as_boxes(a).reshape(-1, 4), as_boxes(b).reshape(-1, 4)
  return iou(a[:, None, :], b[None, :, :])


# ----------------------------------------------------------------------------
# Centre form and the regression target


def to_centre_size(boxes) -> np.ndarray:
  """(xmin, ymin, xmax, ymax) inclusive -> (cx, cy, w, h), continuous frame.

  The box covers ``[xmin, xmax + 1)``, so ``cx = (xmin + xmax + 1) / 2`` and
  ``w = xmax - xmin + 1``.
  """
  b = as_boxes(boxes)
  w = b[..., 2] - b[..., 0] + 1
  h = b[..., 3] - b[..., 1] + 1
  return np.stack([b[..., 0] + w / 2, b[..., 1] + h / 2, w, h], axis=-1)


def from_centre_size(cxcywh) -> np.ndarray:
  """Inverse of :func:`to_centre_size` (fractional coordinates kept)."""
  c = as_boxes(cxcywh)
  xmin = c[..., 0] - c[..., 2] / 2
  ymin = c[..., 1] - c[..., 3] / 2
  return np.stack([xmin, ymin, xmin + c[..., 2] - 1, ymin + c[..., 3] - 1],
                  axis=-1)


# Widths below one pixel make no box; the log normalisation needs a floor.
_MIN_SIDE = 1.0


def encode(boxes, crop_hw: tuple[int, int],
           normalisation: str = "crop_fraction") -> np.ndarray:
  """Box(es) in crop pixels -> the 4-D regression target (Appendix A.1).

  The paper represents a box by "its center coordinates, width, and height"
  and does not say how they are scaled.  Two choices, by name:

  - ``"crop_fraction"``: ``(cx / W, cy / H, w / W, h / H)``, each in about
    [0, 1] for a box inside the crop (OverFeat's own scaling, in crop units).
  - ``"centred_log"``: ``(cx / W - 0.5, cy / H - 0.5, log(w / W), log(h / H))``:
    the centre as an offset from the crop's centre, the size in log scale so
    that a small box's size error costs as much, relatively, as a large one's.

  ``crop_hw`` is the (height, width) of the crop the network sees.  Boxes may
  extend past the crop (the target is then outside [0, 1]).
  """
  h_crop, w_crop = _check_hw(crop_hw)
  c = to_centre_size(boxes)
  cx, cy = c[..., 0] / w_crop, c[..., 1] / h_crop
  w, h = c[..., 2] / w_crop, c[..., 3] / h_crop
  if normalisation == "crop_fraction":
    return np.stack([cx, cy, w, h], axis=-1)
  if normalisation == "centred_log":
    w = np.maximum(w, _MIN_SIDE / w_crop)
    h = np.maximum(h, _MIN_SIDE / h_crop)
    return np.stack([cx - 0.5, cy - 0.5, np.log(w), np.log(h)], axis=-1)
  raise ValueError(f"unknown box normalisation {normalisation!r}; expected "
                   f"one of {NORMALISATIONS}")


def decode(targets, crop_hw: tuple[int, int],
           normalisation: str = "crop_fraction") -> np.ndarray:
  """Inverse of :func:`encode`: regression outputs -> boxes in crop pixels.

  Negative or zero decoded sizes (possible from a raw ``crop_fraction``
  output) are raised to one pixel, so every decoded box is a box.
  """
  h_crop, w_crop = _check_hw(crop_hw)
  t = as_boxes(targets)
  if normalisation == "crop_fraction":
    cx, cy, w, h = t[..., 0], t[..., 1], t[..., 2], t[..., 3]
  elif normalisation == "centred_log":
    cx, cy = t[..., 0] + 0.5, t[..., 1] + 0.5
    # exp overflows to inf only for absurd outputs; clip keeps boxes finite.
    w, h = np.exp(np.clip(t[..., 2], -20, 20)), np.exp(np.clip(t[..., 3],
                                                                 -20, 20))
  else:
    raise ValueError(f"unknown box normalisation {normalisation!r}; expected "
                     f"one of {NORMALISATIONS}")
  w = np.maximum(w * w_crop, _MIN_SIDE)
  h = np.maximum(h * h_crop, _MIN_SIDE)
  return from_centre_size(np.stack([cx * w_crop, cy * h_crop, w, h], axis=-1))


def _check_hw(hw) -> tuple[float, float]:
  h, w = (float(v) for v in hw)
  if h <= 0 or w <= 0:
    raise ValueError(f"crop size must be positive (height, width); got {hw}")
  return h, w


# ----------------------------------------------------------------------------
# The box under the training / test image transforms


def rescale(boxes, from_hw: tuple[int, int],
            to_hw: tuple[int, int]) -> np.ndarray:
  """Boxes of an image of size ``from_hw`` in the image resized to ``to_hw``.

  A resize maps the continuous frame linearly (pixel edges to pixel edges,
  the convention of OpenCV's and PIL's area-aligned resizing), so the interval
  ``[xmin, xmax + 1)`` becomes ``[xmin * s, (xmax + 1) * s)``.
  """
  b = as_boxes(boxes)
  sy = to_hw[0] / from_hw[0]
  sx = to_hw[1] / from_hw[1]
  return np.stack([b[..., 0] * sx, b[..., 1] * sy,
                   (b[..., 2] + 1) * sx - 1, (b[..., 3] + 1) * sy - 1], axis=-1)


def crop(boxes, top: int, left: int) -> np.ndarray:
  """Boxes in the frame of a crop whose top-left pixel is (``top``, ``left``).

  Only a shift: boxes are NOT clipped (see :func:`clip` and
  :func:`crop_target`), so a box cut by the crop keeps its full extent.
  """
  b = as_boxes(boxes)
  return b - np.array([left, top, left, top], dtype=np.float64)


def flip_horizontal(boxes, width: int) -> np.ndarray:
  """Boxes after mirroring an image ``width`` pixels wide (column i -> W-1-i)."""
  b = as_boxes(boxes)
  return np.stack([width - 1 - b[..., 2], b[..., 1], width - 1 - b[..., 0],
                   b[..., 3]], axis=-1)


def clip(boxes, hw: tuple[int, int]) -> np.ndarray:
  """Boxes clipped to the pixels of an image of size ``hw`` = (H, W)."""
  b = as_boxes(boxes)
  h, w = hw
  return np.stack([np.clip(b[..., 0], 0, w - 1), np.clip(b[..., 1], 0, h - 1),
                   np.clip(b[..., 2], 0, w - 1), np.clip(b[..., 3], 0, h - 1)],
                  axis=-1)


def visible_fraction(boxes, hw: tuple[int, int]) -> np.ndarray:
  """Share of each box's area that lies inside an image/crop of size ``hw``."""
  b = as_boxes(boxes)
  frame = np.array([0, 0, hw[1] - 1, hw[0] - 1], dtype=np.float64)
  area = box_area(b)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(area > 0, intersection(b, frame) / np.where(area > 0, area,
                                                                 1), 0.0)


def to_crop_frame(boxes, image_hw: tuple[int, int],
                  resized_hw: tuple[int, int], *, top: int, left: int,
                  crop_hw: tuple[int, int], flip: bool) -> np.ndarray:
  """Boxes of the stored image moved through the training/test geometry:
  rescale to ``resized_hw`` (the paper's S or Q), take the crop at
  (``top``, ``left``) of size ``crop_hw``, then mirror it if ``flip`` -- the
  order of ``vgg_jax.preprocess`` (rescale_shorter_side, random_crop,
  horizontal_flip).  Boxes are not clipped (see :func:`crop_target`)."""
  out = crop(rescale(boxes, image_hw, resized_hw), top, left)
  return flip_horizontal(out, crop_hw[1]) if flip else out


def centre_box(image_hw: tuple[int, int], fraction: float = 0.75
               ) -> np.ndarray:
  """The centre-box baseline: a box centred in the image, ``fraction`` of its
  height and width (at least one pixel), in the module's convention."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"fraction must be in (0, 1]; got {fraction}")
  h, w = _check_hw(image_hw)
  bw, bh = max(w * fraction, _MIN_SIDE), max(h * fraction, _MIN_SIDE)
  return from_centre_size(np.array([w / 2, h / 2, bw, bh]))


# What to do with an image holding several boxes of the target class.
MULTI_BOX_RULES = ("largest_visible", "first")


@dataclasses.dataclass(frozen=True)
class CropTarget:
  """The training target of one crop: ``valid`` False means "do not train on
  this crop's box" (the loss weight is 0); ``box`` is in crop pixels."""
  box: np.ndarray
  valid: bool
  index: int  # which of the image's boxes was chosen; -1 if none
  visible: float  # share of that box inside the crop


def crop_target(boxes_in_crop, crop_hw: tuple[int, int], *,
                box_labels: Sequence[int] | None = None,
                label: int | None = None, min_visible: float = 0.5,
                multi_box: str = "largest_visible",
                clip_to_crop: bool = False) -> CropTarget:
  """Chooses the regression target of a training crop (Appendix A.1).

  ``boxes_in_crop``: the image's boxes already moved into the crop's frame
  (:func:`rescale`, :func:`crop`, :func:`flip_horizontal`).  Only boxes of
  class ``label`` are candidates when ``box_labels`` and ``label`` are given
  (a file may hold objects of several classes; the per-class regressor is
  trained on its class's box).

  The crop-overlap rule follows OverFeat (Sermanet et al., 2014, §4.2: no
  training on boxes with less than 50% overlap with the field of view): a box
  is a candidate when at least ``min_visible`` of its area lies inside the
  crop.  Among candidates, ``multi_box`` decides:

  - ``"largest_visible"`` (default): the box with the largest area inside
    the crop (ties: the first) -- the object the crop is most "about", which
    is also what a single-box prediction at test time should find;
  - ``"first"``: the first candidate in annotation order.

  No candidate -> ``valid=False`` (the crop still trains classification in a
  joint setting but contributes no box loss).  The target is the WHOLE box
  (it may extend past the crop) unless ``clip_to_crop``: protocol 1 scores
  the box against the whole ground-truth box, which the net can only learn
  if the target is not cut.
  """
  if multi_box not in MULTI_BOX_RULES:
    raise ValueError(f"multi_box must be one of {MULTI_BOX_RULES}; got "
                     f"{multi_box!r}")
  if not 0.0 <= min_visible <= 1.0:
    raise ValueError(f"min_visible is a fraction in [0, 1]; got {min_visible}")
  b = as_boxes(boxes_in_crop).reshape(-1, 4)
  cand = np.ones(len(b), bool)
  if label is not None and box_labels is not None:
    if len(box_labels) != len(b):
      raise ValueError(f"{len(b)} boxes but {len(box_labels)} box labels")
    cand &= np.asarray(box_labels) == label
  vis = visible_fraction(b, crop_hw) if len(b) else np.zeros(0)
  cand &= vis >= min_visible
  if not cand.any():
    return CropTarget(np.zeros(4), False, -1, 0.0)
  idx = np.flatnonzero(cand)
  if multi_box == "largest_visible":
    inside = intersection(b[idx], np.array(
        [0, 0, crop_hw[1] - 1, crop_hw[0] - 1], dtype=np.float64))
    i = int(idx[int(np.argmax(inside))])
  else:
    i = int(idx[0])
  box = clip(b[i], crop_hw) if clip_to_crop else b[i]
  return CropTarget(box, True, i, float(vis[i]))


# ----------------------------------------------------------------------------
# OverFeat §4.3 greedy merge, and the union of several localisers


@dataclasses.dataclass(frozen=True)
class MergedBoxes:
  """Result of :func:`greedy_merge` for one class, best first."""
  boxes: np.ndarray  # (K, 4)
  scores: np.ndarray  # (K,) summed class scores of the members
  counts: np.ndarray  # (K,) number of original boxes merged into each


def match_score(a, b) -> np.ndarray:
  """OverFeat's pair "match score", in our reading (see :func:`greedy_merge`).

  ``centre distance / mean side + (1 - IoU)``, where the mean side is the
  average of the two boxes' ``sqrt(area)``.  0 for identical boxes, growing
  as they drift apart; unit-free, so one threshold serves every image size.
  """
  ca, cb = to_centre_size(a), to_centre_size(b)
  dist = np.hypot(ca[..., 0] - cb[..., 0], ca[..., 1] - cb[..., 1])
  side = 0.5 * (np.sqrt(ca[..., 2] * ca[..., 3]) + np.sqrt(cb[..., 2] *
                                                           cb[..., 3]))
  return dist / np.maximum(side, 1e-9) + (1.0 - iou(a, b))


DEFAULT_MERGE_THRESHOLD = 0.8


def greedy_merge(boxes, scores, *, threshold: float = DEFAULT_MERGE_THRESHOLD
                 ) -> MergedBoxes:
  """OverFeat's greedy merge (Sermanet et al., 2014, §4.3) of one class's
  boxes, as the paper's Appendix A.2 uses it.

  OverFeat: repeat { (b1, b2) = argmin match_score over pairs; if
  match_score(b1, b2) > t stop; else replace b1, b2 by box_merge(b1, b2) },
  with match_score "the sum of the distance between centers of the two
  bounding boxes and the intersection area of the boxes" and box_merge "the
  average of the bounding boxes' coordinates"; the final boxes are rated by
  "cumulatively adding the detection class outputs" of the windows that
  predicted them.  Read literally the match score adds a length to an area,
  and a LARGER intersection would make a pair LESS mergeable, which cannot be
  meant.  Our reading, exact and unit-free:

  - "closest": the pair with the smallest :func:`match_score`
    (normalised centre distance plus ``1 - IoU``); ties go to the pair
    with the lowest indices (row-major), so the result is deterministic;
  - "close enough": ``match_score <= threshold`` (merging stops when the
    closest pair scores above it, OverFeat's "> t stop");
  - the merged box is the mean of the coordinates of ALL original boxes it
    contains (a cluster mean, so the order of merges does not weight boxes
    unequally; plain pairwise averaging would make the last-merged box count
    half);
  - its score is the sum of its members' class scores.

  ``boxes`` (N, 4) and ``scores`` (N,) are one class's predictions (apply it
  per class; use :func:`union` first to fuse several localisers).  Returns
  the merged boxes sorted by score, highest first.  ``threshold`` is exposed
  because the paper does not give one; choose it on held-out training
  images, not on validation.
  """
  b = as_boxes(boxes).reshape(-1, 4)
  s = np.asarray(scores, np.float64).reshape(-1)
  if len(s) != len(b):
    raise ValueError(f"{len(b)} boxes but {len(s)} scores")
  n = len(b)
  if n == 0:
    return MergedBoxes(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
  sums = b.copy()  # coordinate sums of each cluster
  counts = np.ones(n, np.int64)
  tot = s.copy()
  alive = np.ones(n, bool)
  means = b.copy()
  m = match_score(means[:, None, :], means[None, :, :])
  m[np.tril_indices(n)] = np.inf  # each unordered pair once, never self
  while alive.sum() > 1:
    flat = int(np.argmin(m))
    i, j = divmod(flat, n)
    if not m[i, j] <= threshold:
      break
    # Cluster j joins cluster i (i < j): i keeps the lower index.
    sums[i] += sums[j]
    counts[i] += counts[j]
    tot[i] += tot[j]
    means[i] = sums[i] / counts[i]
    alive[j] = False
    m[j, :] = np.inf
    m[:, j] = np.inf
    row = match_score(means[i][None, :], means)
    row[~alive] = np.inf
    row[i] = np.inf
    m[i, i + 1:] = row[i + 1:]
    m[:i, i] = row[:i]
  keep = np.flatnonzero(alive)
  order = keep[np.argsort(-tot[keep], kind="stable")]
  return MergedBoxes(means[order], tot[order], counts[order])


def union(*predictions: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Union of several localisers' predictions before merging (Table 9's
  fusion: "we first take the union of their sets of bounding box
  predictions, and then run the merging procedure on the union").

  Each argument is ``(boxes (N, 4), scores (N,), classes (N,))``; returns the
  concatenation in the same form.
  """
  if not predictions:
    raise ValueError("union needs at least one (boxes, scores, classes)")
  bs, ss, cs = [], [], []
  for k, p in enumerate(predictions):
    if len(p) != 3:
      raise ValueError(f"prediction {k}: expected (boxes, scores, classes)")
    b = as_boxes(p[0]).reshape(-1, 4)
    s = np.asarray(p[1], np.float64).reshape(-1)
    c = np.asarray(p[2], np.int64).reshape(-1)
    if not len(b) == len(s) == len(c):
      raise ValueError(f"prediction {k}: {len(b)} boxes, {len(s)} scores, "
                       f"{len(c)} classes")
    bs.append(b)
    ss.append(s)
    cs.append(c)
  return np.concatenate(bs), np.concatenate(ss), np.concatenate(cs)


def top_k_localisations(boxes, scores, classes, top_classes: Sequence[int], *,
                        threshold: float = DEFAULT_MERGE_THRESHOLD
                        ) -> list[tuple[int, np.ndarray, float]]:
  """One box per class for the top classes (the ILSVRC submission, paper
  Appendix A.2): per class, :func:`greedy_merge` its boxes and keep the merged
  box with the highest summed score.

  ``top_classes`` come from the classification net (best first); a class
  with no box predictions (impossible for PCR on a dense map, possible for
  filtered inputs) gets no guess rather than an invented box.  Returns
  ``[(class, box, score)]`` in the order of ``top_classes``.
  """
  b = as_boxes(boxes).reshape(-1, 4)
  s = np.asarray(scores, np.float64).reshape(-1)
  c = np.asarray(classes, np.int64).reshape(-1)
  out = []
  for cls in top_classes:
    sel = c == int(cls)
    if not sel.any():
      continue
    merged = greedy_merge(b[sel], s[sel], threshold=threshold)
    out.append((int(cls), merged.boxes[0], float(merged.scores[0])))
  return out
