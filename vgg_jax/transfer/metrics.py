"""PASCAL VOC average precision and Caltech mean class recall (Appendix B).

VOC classification (the devkit's per-class evaluation): images ranked by
decreasing score; a "difficult" image of a class is neither a positive nor a
negative for that class (it adds neither a true nor a false positive, which
is the same as leaving it out of the ranking).  Precision/recall after each
ranked image, then

* ``"voc2007"``: the 11-point interpolated AP, the mean over recall levels
  t = 0, 0.1, ..., 1 of the highest precision at any recall >= t (0 if none);
* ``"voc2012"``: the area under the precision/recall curve made monotone
  (precision at each recall replaced by the highest precision at any higher
  recall), summed over the points where recall changes.

Ties: images with equal scores keep their given order (a stable sort), as
the devkit's MATLAB ``sort`` does.  scikit-learn's ``average_precision_score``
is neither interpolated nor order-dependent on ties; docs/transfer.md says
where it agrees with these.

Caltech (Appendix B): mean class recall, the mean over the classes present
in the test labels of (correct predictions of that class / its test images),
which "compensates for a different number of test images per class".
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

AP_METHODS = ("voc2007", "voc2012")


def _check_ranking_inputs(scores, positive, difficult):
  s = np.asarray(scores, np.float64)
  p = np.asarray(positive, bool)
  d = np.zeros_like(p) if difficult is None else np.asarray(difficult, bool)
  if s.ndim != 1 or p.shape != s.shape or d.shape != s.shape:
    raise ValueError(f"scores, positive and difficult must be 1-D and of one "
                     f"length, got {s.shape}, {p.shape}, {d.shape}")
  if np.isnan(s).any():
    raise ValueError("scores contain NaN; rank undecodable images last with "
                     "-inf instead")
  return s, p, d


def _ranked_hits(scores, positive, difficult):
  """(true positives after each ranked non-difficult image, positives)."""
  s, p, d = _check_ranking_inputs(scores, positive, difficult)
  keep = ~d
  s, p = s[keep], p[keep]
  num_pos = int(p.sum())
  if num_pos == 0:
    raise ValueError("no (non-difficult) positive image: AP is undefined for "
                     "this class; check the labels of the evaluation split")
  order = np.argsort(-s, kind="stable")
  return np.cumsum(p[order]), num_pos


def precision_recall(scores, positive, difficult=None):
  """(recall, precision) after each ranked non-difficult image.

  positive: True where the image shows the class; difficult: True where its
  only instances of the class are difficult (ignored; ``positive`` is then
  irrelevant).
  """
  tp, num_pos = _ranked_hits(scores, positive, difficult)
  return tp / num_pos, tp / np.arange(1, len(tp) + 1)


def average_precision(scores, positive, difficult=None,
                      method: str = "voc2007") -> float:
  """VOC AP of one class ("voc2007": 11-point; "voc2012": area)."""
  if method not in AP_METHODS:
    raise ValueError(f"method must be one of {AP_METHODS}, got {method!r}")
  tp, num_pos = _ranked_hits(scores, positive, difficult)
  precision = tp / np.arange(1, len(tp) + 1)
  # Highest precision at this or any higher recall (recall is non-decreasing
  # along the ranking, so a reversed running maximum).
  envelope = np.maximum.accumulate(precision[::-1])[::-1]
  if method == "voc2007":
    # First ranked position whose recall reaches level k/10, compared in
    # integers (10 tp >= k num_pos): exactly "recall >= t".  Ports that
    # compare floats (tp/num_pos >= 0.1 k) miss a recall of exactly 0.3, 0.6
    # or 0.7 by rounding; docs/transfer.md.
    first = [int(np.searchsorted(10 * tp, k * num_pos, side="left"))
             for k in range(11)]
    best = [envelope[i] if i < len(tp) else 0.0 for i in first]
    return float(np.mean(best))
  steps = np.diff(np.concatenate([[0], tp])) / num_pos
  return float(np.sum(steps * envelope))


def mean_average_precision(scores, positive, difficult=None,
                           method: str = "voc2007",
                           class_names: Sequence[str] | None = None) -> dict:
  """Per-class AP and their mean over (N, K) score / label matrices.

  Returns {"ap": [K floats], "map": float, "method": method}, plus
  "classes" when ``class_names`` is given.
  """
  s = np.asarray(scores)
  p = np.asarray(positive, bool)
  d = np.zeros_like(p) if difficult is None else np.asarray(difficult, bool)
  if s.ndim != 2 or p.shape != s.shape or d.shape != s.shape:
    raise ValueError(f"scores, positive, difficult must be (N, K) alike, got "
                     f"{s.shape}, {p.shape}, {d.shape}")
  aps = []
  for k in range(s.shape[1]):
    try:
      aps.append(average_precision(s[:, k], p[:, k], d[:, k], method))
    except ValueError as e:
      name = class_names[k] if class_names is not None else k
      raise ValueError(f"class {name}: {e}") from None
  out = {"ap": aps, "map": float(np.mean(aps)), "method": method}
  if class_names is not None:
    out["classes"] = list(class_names)
  return out


def class_recalls(y_true, y_pred) -> dict[int, float]:
  """{class: recall} over the classes present in ``y_true``."""
  t = np.asarray(y_true)
  p = np.asarray(y_pred)
  if t.shape != p.shape or t.ndim != 1:
    raise ValueError(f"y_true and y_pred must be 1-D of one length, got "
                     f"{t.shape} and {p.shape}")
  if t.size == 0:
    raise ValueError("no test examples")
  return {int(c): float(np.mean(p[t == c] == c)) for c in np.unique(t)}


def mean_class_recall(y_true, y_pred) -> float:
  """Caltech's measure: the unweighted mean of the per-class recalls."""
  return float(np.mean(list(class_recalls(y_true, y_pred).values())))
