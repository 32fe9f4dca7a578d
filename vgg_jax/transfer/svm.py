"""Linear SVMs on the descriptors and the paper's protocols (Appendix B).

* C is chosen on a held-out 20% of the training images ("In each split, 20%
  of training images were used as a validation set for hyper-parameter
  selection"), seeded and stratified, from a grid; the SVMs are then refit
  on all training images with that C.
* Multi-class (Caltech): scikit-learn's ``LinearSVC`` (one-vs-rest), C chosen
  by the mean class recall on the held-out part.
* Multi-label (VOC): one binary ``LinearSVC`` per class; an image that is
  "difficult" for a class is left out of that class's training and of its
  held-out AP.  C chosen per class (its held-out AP) or shared (held-out
  mAP), ``c_selection``.
* Caltech splits: per class, a seeded random ``num_train`` training images
  and up to ``max_test`` of the rest for testing (Caltech-101: 30 and 50,
  102 classes with background; Caltech-256: 60 and all the rest); 3 splits;
  mean class recall reported as mean and std over the splits.

LinearSVC's defaults otherwise (squared hinge, L2 penalty, an intercept);
the paper does not name its SVM's loss.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.svm import LinearSVC

from vgg_jax.transfer import metrics

DEFAULT_C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
VAL_FRACTION = 0.2
CALTECH101 = {"num_train": 30, "max_test": 50, "num_classes": 102}
CALTECH256 = {"num_train": 60, "max_test": None, "num_classes": 257}


def _svc(c: float, seed: int) -> LinearSVC:
  return LinearSVC(C=c, max_iter=10000, random_state=seed)


def _fit(x, y, c, seed):
  with warnings.catch_warnings():
    # Reported through the chosen C, not as noise per grid point.
    warnings.simplefilter("ignore", ConvergenceWarning)
    return _svc(c, seed).fit(x, y)


def _check_grid(c_grid):
  grid = tuple(float(c) for c in c_grid)
  if not grid or any(c <= 0 for c in grid):
    raise ValueError(f"the C grid needs positive values, got {c_grid}")
  return grid


def holdout_split(strata, fraction: float = VAL_FRACTION, seed: int = 0):
  """(fit positions, held-out positions): a seeded, stratified ``fraction``.

  strata: one label per training image (the class; for multi-label data,
  ``multilabel_strata``).  Strata too small to be split are kept whole in
  the fitting part.
  """
  strata = np.asarray(strata)
  idx = np.arange(len(strata))
  values, counts = np.unique(strata, return_counts=True)
  small = np.isin(strata, values[counts < 2])
  fit_idx, val_idx = train_test_split(
      idx[~small], test_size=fraction, random_state=seed, shuffle=True,
      stratify=strata[~small])
  return np.sort(np.concatenate([fit_idx, idx[small]])), np.sort(val_idx)


def multilabel_strata(positive) -> np.ndarray:
  """A stratum per image for multi-label data: its rarest positive class
  (-1 for an image with none), so that every class's positives are spread
  over both parts of the hold-out split."""
  p = np.asarray(positive, bool)
  freq = p.sum(axis=0)
  rank = np.where(p, freq[None, :], np.iinfo(np.int64).max)
  return np.where(p.any(axis=1), np.argmin(rank, axis=1), -1)


@dataclasses.dataclass
class MulticlassResult:
  model: LinearSVC
  c: float
  validation: dict[float, float]  # C -> held-out mean class recall


def fit_multiclass(x, y, c_grid=DEFAULT_C_GRID, seed: int = 0,
                   val_fraction: float = VAL_FRACTION) -> MulticlassResult:
  """One-vs-rest LinearSVC; C by held-out mean class recall; refit on all."""
  x, y = np.asarray(x, np.float32), np.asarray(y)
  grid = _check_grid(c_grid)
  fit_idx, val_idx = holdout_split(y, val_fraction, seed)
  scores = {}
  for c in grid:
    m = _fit(x[fit_idx], y[fit_idx], c, seed)
    scores[c] = metrics.mean_class_recall(y[val_idx], m.predict(x[val_idx]))
  best = max(grid, key=lambda c: (scores[c], -c))  # ties: the smaller C
  return MulticlassResult(_fit(x, y, best, seed), best, scores)


@dataclasses.dataclass
class MultilabelResult:
  models: list[LinearSVC]
  c: list[float]                        # per class
  validation: dict[float, list[float]]  # C -> held-out AP per class

  def decision_function(self, x) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return np.stack([m.decision_function(x) for m in self.models], axis=1)


def fit_multilabel(x, positive, difficult=None, c_grid=DEFAULT_C_GRID,
                   seed: int = 0, val_fraction: float = VAL_FRACTION,
                   c_selection: str = "per_class",
                   ap_method: str = "voc2007") -> MultilabelResult:
  """A binary LinearSVC per class (VOC); difficult images of a class are
  left out of its training and held-out AP.  c_selection: "per_class" (each
  class its best held-out AP) or "shared" (the best held-out mAP)."""
  if c_selection not in ("per_class", "shared"):
    raise ValueError(f"c_selection must be 'per_class' or 'shared', got "
                     f"{c_selection!r}")
  x = np.asarray(x, np.float32)
  pos = np.asarray(positive, bool)
  dif = np.zeros_like(pos) if difficult is None else np.asarray(difficult,
                                                                 bool)
  grid = _check_grid(c_grid)
  num_classes = pos.shape[1]
  for k in range(num_classes):
    n_pos = int((pos[:, k] & ~dif[:, k]).sum())
    n_neg = int((~pos[:, k] & ~dif[:, k]).sum())
    if n_pos < 2 or n_neg < 2:
      raise ValueError(f"class {k}: {n_pos} positive and {n_neg} negative "
                       "non-difficult training images; an SVM and its "
                       "held-out C selection need at least 2 of each")
  fit_idx, val_idx = holdout_split(multilabel_strata(pos & ~dif),
                                   val_fraction, seed)

  def fit_class(k, rows, c):
    rows = rows[~dif[rows, k]]
    return _fit(x[rows], pos[rows, k], c, seed)

  validation = {c: [] for c in grid}
  for k in range(num_classes):
    val_pos = (pos[val_idx, k] & ~dif[val_idx, k]).sum()
    for c in grid:
      if val_pos == 0:  # no held-out positive: AP undefined, any C ties
        validation[c].append(float("nan"))
        continue
      m = fit_class(k, fit_idx, c)
      validation[c].append(metrics.average_precision(
          m.decision_function(x[val_idx]), pos[val_idx, k], dif[val_idx, k],
          ap_method))
  if c_selection == "shared":
    best = max(grid, key=lambda c: (np.nanmean(validation[c]), -c))
    chosen = [best] * num_classes
  else:
    chosen = []
    for k in range(num_classes):
      chosen.append(max(grid, key=lambda c: (
          np.nan_to_num(validation[c][k], nan=-1.0), -c)))
  all_rows = np.arange(len(x))
  models = [fit_class(k, all_rows, chosen[k]) for k in range(num_classes)]
  return MultilabelResult(models, chosen, validation)


def caltech_splits(labels, num_train: int, max_test: int | None,
                   num_splits: int = 3, seed: int = 0
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
  """``num_splits`` seeded random (train positions, test positions).

  Per class: ``num_train`` training images and up to ``max_test`` (None: all)
  of the rest for testing.  A class with no image left for testing is an
  error (its recall would be undefined).
  """
  y = np.asarray(labels)
  classes, counts = np.unique(y, return_counts=True)
  short = [(int(c), int(n)) for c, n in zip(classes, counts)
           if n <= num_train]
  if short:
    raise ValueError(f"classes with no more than {num_train} images (class, "
                     f"count): {short[:10]}; each needs {num_train} for "
                     "training and at least one for testing")
  out = []
  for s in range(num_splits):
    rng = np.random.default_rng([seed, s])
    train, test = [], []
    for c in classes:
      idx = rng.permutation(np.flatnonzero(y == c))
      train.append(idx[:num_train])
      rest = idx[num_train:]
      test.append(rest if max_test is None else rest[:max_test])
    out.append((np.sort(np.concatenate(train)), np.sort(np.concatenate(test))))
  return out


def run_caltech(x, labels, *, num_train: int, max_test: int | None,
                num_splits: int = 3, seed: int = 0,
                c_grid=DEFAULT_C_GRID, failed_labels: Sequence[int] = (),
                keep_predictions: bool = False) -> dict:
  """The Caltech protocol on one descriptor set.

  failed_labels: classes of images that could not be decoded; each split
  draws them like any image and counts any drawn for testing as a miss.
  Returns {"mean_class_recall": {"mean", "std", "per_split"}, "c": [...],
  ...}; std over the splits with ddof=0.  keep_predictions adds
  "predictions": per split (test positions, true labels, predicted labels),
  positions counting the decoded images first, then the failed ones.
  """
  x = np.asarray(x, np.float32)
  y = np.asarray(labels)
  failed_labels = np.asarray(failed_labels, y.dtype)
  n_ok = len(y)
  y_all = np.concatenate([y, failed_labels])
  splits = caltech_splits(y_all, num_train, max_test, num_splits, seed)
  per_split, chosen, details, predictions = [], [], [], []
  for s, (train, test) in enumerate(splits):
    train_ok = train[train < n_ok]
    res = fit_multiclass(x[train_ok], y_all[train_ok], c_grid, seed + s)
    pred = np.full(len(test), -1, y_all.dtype)  # -1: never a class
    ok = test < n_ok
    pred[ok] = res.model.predict(x[test[ok]])
    mcr = metrics.mean_class_recall(y_all[test], pred)
    predictions.append((test, y_all[test], pred))
    per_split.append(mcr)
    chosen.append(res.c)
    details.append({"split": s, "num_train": int(len(train)),
                    "num_test": int(len(test)),
                    "failed_train": int((train >= n_ok).sum()),
                    "failed_test": int((~ok).sum()), "c": res.c,
                    "validation": {str(c): v for c, v in
                                   res.validation.items()},
                    "mean_class_recall": mcr})
  out = {"mean_class_recall": {"mean": float(np.mean(per_split)),
                               "std": float(np.std(per_split)),
                               "per_split": per_split},
         "c": chosen, "splits": details, "num_train_per_class": num_train,
         "max_test_per_class": max_test, "seed": seed}
  if keep_predictions:
    out["predictions"] = predictions
  return out


def run_voc(train_x, train_positive, train_difficult, test_x, test_positive,
            test_difficult, *, ap_method: str = "voc2007",
            c_grid=DEFAULT_C_GRID, seed: int = 0,
            c_selection: str = "per_class",
            class_names: Sequence[str] | None = None,
            failed_test_positive=None, failed_test_difficult=None,
            keep_scores: bool = False) -> dict:
  """The VOC protocol: per-class SVMs on train, per-class AP and mAP on test.

  failed_test_*: labels of test images that could not be decoded; they are
  ranked last (score -inf) for every class, never dropped.  keep_scores adds
  "test_scores", the (N, K) SVM scores the APs were computed from (decoded
  test images first, then the failed ones).
  """
  res = fit_multilabel(train_x, train_positive, train_difficult, c_grid,
                       seed, c_selection=c_selection, ap_method=ap_method)
  scores = res.decision_function(test_x)
  pos = np.asarray(test_positive, bool)
  dif = np.asarray(test_difficult, bool)
  n_failed = 0
  if failed_test_positive is not None and len(failed_test_positive):
    fp = np.asarray(failed_test_positive, bool)
    n_failed = len(fp)
    scores = np.concatenate([scores, np.full(fp.shape, -np.inf)])
    pos = np.concatenate([pos, fp])
    dif = np.concatenate([dif, np.asarray(failed_test_difficult, bool)])
  out = metrics.mean_average_precision(scores, pos, dif, ap_method,
                                       class_names)
  out.update({"c": res.c, "c_selection": c_selection,
              "validation": {str(c): [None if np.isnan(a) else a for a in v]
                             for c, v in res.validation.items()},
              "num_test": int(len(scores)), "failed_test": n_failed,
              "seed": seed})
  if keep_scores:
    out["test_scores"] = scores
  return out
