"""The ILSVRC localisation error (paper Appendix A.2, Tables 8-10).

Two measures:

- :func:`top5_localisation_error`, the ILSVRC classification+localisation
  error exactly as the ILSVRC-2012 devkit's ``eval_clsloc.m`` computes it
  (Table 9/10's "top-5 localisation error").  Per image ``i`` with ground-truth
  labels ``k = 1..n_i`` and up to 5 guesses ``(class_j, box_j)``:
  ``d(j, k) = 0`` when ``class_j`` equals label ``k`` and the box's overlap
  (:func:`vgg_jax.localisation.boxes.iou`) with SOME ground-truth box of
  class ``k`` is ``>= 0.5``, else 1;
  ``e_i = sum_k min_j d(j, k) / n_i``; the error is
  ``sum_i e_i / (number of images - number blacklisted)``.  On ILSVRC-2012
  every validation image has exactly one label, so the error is the share of
  images with no right guess.  Guesses beyond the fifth are ignored, as the
  devkit ignores them.  Blacklisted images count neither way.
- :func:`centre_gt_localisation_error`, protocol 1 (Table 8): one box per
  image, predicted for the ground-truth class; wrong when its overlap with
  every ground-truth box of that class fails the criterion.

The threshold, precisely: the devkit counts a box right when
``ov >= 0.5`` (``f_j = ( ov_vector < 0.50 )`` marks an error); the paper's
text (Appendix A.2) says a box is correct if its IoU "is above 0.5", i.e.
``> 0.5``, which would make ``IoU == 0.5`` an error.  The two differ only on
boxes whose IoU is EXACTLY 0.5, which integer pixel boxes can reach (e.g. a
2x1 box against one of its two pixels).  The top-5 error uses the devkit's
``>=`` (that is the official number); protocol 1 defaults to the paper's
``>`` wording (``rule="paper"``) and takes ``rule="devkit"`` for ``>=``.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, Sequence

import numpy as np

from vgg_jax.localisation import boxes as boxes_lib

MIN_IOU = 0.5
RULES = ("devkit", "paper")


@dataclasses.dataclass(frozen=True)
class GroundTruth:
  """One image's ground truth: its labels (ILSVRC: one) and every box with
  its class.  ``labels`` default to the distinct box classes, in order; for
  ILSVRC validation pass ``labels=(the image's label,)``, as the devkit
  takes the labels from its ground-truth file, not from the boxes."""
  boxes: np.ndarray  # (M, 4) inclusive pixel ends
  box_labels: np.ndarray  # (M,)
  labels: tuple[int, ...] = ()

  @staticmethod
  def make(boxes, box_labels, labels: Sequence[int] | None = None
           ) -> "GroundTruth":
    b = boxes_lib.as_boxes(np.reshape(boxes, (-1, 4)) if np.size(boxes)
                           else np.zeros((0, 4)))
    bl = np.asarray(box_labels, np.int64).reshape(-1)
    if len(bl) != len(b):
      raise ValueError(f"{len(b)} ground-truth boxes but {len(bl)} box labels")
    if labels is None:
      labels = tuple(dict.fromkeys(int(v) for v in bl))
    labels = tuple(int(v) for v in labels)
    if not labels:
      raise ValueError("an evaluated image needs at least one ground-truth "
                       "label (an image without boxes cannot be scored)")
    return GroundTruth(b, bl, labels)


@dataclasses.dataclass(frozen=True)
class LocalisationResult:
  """``error``: the fraction; ``per_image``: image id -> e_i (0..1)."""
  error: float
  num_images: int  # images scored
  num_excluded: int  # blacklisted images that were in the ground truth
  per_image: dict


def _passes(ov: np.ndarray, rule: str) -> np.ndarray:
  if rule == "devkit":
    return ov >= MIN_IOU
  if rule == "paper":
    return ov > MIN_IOU
  raise ValueError(f"rule must be one of {RULES}; got {rule!r}")


def _check_ids(predictions: Mapping, ground_truth: Mapping):
  missing = [k for k in ground_truth if k not in predictions]
  if missing:
    raise ValueError(
        f"{len(missing)} ground-truth images have no prediction (e.g. "
        f"{missing[:3]}); every image must be predicted (the devkit requires "
        "one line per image) -- pass an empty list for an image with no guess")
  extra = [k for k in predictions if k not in ground_truth]
  if extra:
    raise ValueError(
        f"{len(extra)} predicted images are not in the ground truth (e.g. "
        f"{extra[:3]}); check the image ids")


def _blacklist(blacklist: Iterable | None, ground_truth: Mapping) -> set:
  if blacklist is None:
    return set()
  bl = set(blacklist)
  unknown = [k for k in bl if k not in ground_truth]
  if unknown:
    raise ValueError(f"{len(unknown)} blacklisted ids are not in the ground "
                     f"truth (e.g. {sorted(unknown, key=str)[:3]}); the "
                     "blacklist must use the same image ids")
  return bl


def top5_localisation_error(predictions: Mapping, ground_truth: Mapping, *,
                            blacklist: Iterable | None = None,
                            max_guesses: int = 5,
                            rule: str = "devkit") -> LocalisationResult:
  """ILSVRC top-5 localisation error (module doc; the devkit's formula).

  ``predictions``: image id -> sequence of ``(class, box)`` guesses, best
  first (extra guesses beyond ``max_guesses`` are ignored).
  ``ground_truth``: image id -> :class:`GroundTruth`.
  ``blacklist``: image ids left out of the score (the devkit's validation
  blacklist; pass the list you use); each must be a ground-truth id.
  """
  _check_ids(predictions, ground_truth)
  bl = _blacklist(blacklist, ground_truth)
  per_image = {}
  for image_id, gt in ground_truth.items():
    if image_id in bl:
      continue
    guesses = list(predictions[image_id])[:max_guesses]
    missed = 0
    for label in gt.labels:
      gt_boxes = gt.boxes[gt.box_labels == label]
      hit = False
      for cls, box in guesses:
        if int(cls) != label or not len(gt_boxes):
          continue
        if _passes(boxes_lib.iou(np.asarray(box, np.float64)[None, :],
                                 gt_boxes), rule).any():
          hit = True
          break
      missed += 0 if hit else 1
    per_image[image_id] = missed / len(gt.labels)
  n = len(per_image)
  if n == 0:
    raise ValueError("no image left to score (empty ground truth, or all "
                     "blacklisted)")
  return LocalisationResult(float(sum(per_image.values()) / n), n, len(bl),
                            per_image)


def centre_gt_localisation_error(predicted_boxes: Mapping,
                                 ground_truth: Mapping, *,
                                 blacklist: Iterable | None = None,
                                 rule: str = "paper") -> LocalisationResult:
  """Protocol 1 (paper Table 8): one box per image for its ground-truth class.

  ``predicted_boxes``: image id -> the box (4,) predicted for the image's
  (first) ground-truth label from the central crop, in image pixels.  Wrong
  when its IoU with every ground-truth box of that class fails ``rule``
  (default ``"paper"``: correct only if IoU > 0.5; ``"devkit"``: >= 0.5).
  """
  _check_ids(predicted_boxes, ground_truth)
  bl = _blacklist(blacklist, ground_truth)
  per_image = {}
  for image_id, gt in ground_truth.items():
    if image_id in bl:
      continue
    gt_boxes = gt.boxes[gt.box_labels == gt.labels[0]]
    box = boxes_lib.as_boxes(predicted_boxes[image_id]).reshape(4)
    ok = len(gt_boxes) and _passes(boxes_lib.iou(box[None, :], gt_boxes),
                                   rule).any()
    per_image[image_id] = 0.0 if ok else 1.0
  n = len(per_image)
  if n == 0:
    raise ValueError("no image left to score (empty ground truth, or all "
                     "blacklisted)")
  return LocalisationResult(float(sum(per_image.values()) / n), n, len(bl),
                            per_image)


@dataclasses.dataclass(frozen=True)
class DensePredictions:
  """One image's protocol-2 inputs before merging: every box the localiser(s)
  predicted (already in image pixels, already the union over localisers),
  the class each is for, its class score, and the classifier's top classes
  (best first)."""
  boxes: np.ndarray  # (N, 4)
  scores: np.ndarray  # (N,)
  classes: np.ndarray  # (N,)
  top_classes: tuple[int, ...]


def merged_guesses(dense: Mapping, *, threshold: float) -> dict:
  """Image id -> the (class, box) guesses of protocol 2: per top class, the
  best box after OverFeat's greedy merge (``boxes.top_k_localisations``)."""
  return {k: [(c, b) for c, b, _ in boxes_lib.top_k_localisations(
      d.boxes, d.scores, d.classes, d.top_classes, threshold=threshold)]
          for k, d in dense.items()}


def merge_threshold_sweep(dense: Mapping, ground_truth: Mapping,
                          thresholds: Sequence[float]) -> dict:
  """Top-5 localisation error for each merge threshold, and the best one.

  Meant for HELD-OUT TRAINING images (the merge threshold is a choice the
  paper does not report; choosing it on validation would fit the test).
  Returns ``{"errors": {threshold: error}, "best": threshold}``; ties go to
  the smaller threshold (the less merging).
  """
  if not len(thresholds):
    raise ValueError("give at least one threshold")
  errors = {float(t): top5_localisation_error(
      merged_guesses(dense, threshold=float(t)), ground_truth).error
            for t in thresholds}
  best = min(sorted(errors), key=lambda t: errors[t])
  return {"errors": errors, "best": best}
