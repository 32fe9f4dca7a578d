"""VOC AP and mean class recall against hand-computed cases, a literal
transcription of the VOC devkit's MATLAB (VOCevalcls.m / VOCap.m), and
scikit-learn where it computes the same quantity."""

import pathlib
import sys
from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import (average_precision_score, balanced_accuracy_score,
                             precision_recall_curve)

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from voc_devkit_reference import devkit_ap  # noqa: E402

from vgg_jax.transfer import metrics  # noqa: E402


def test_hand_computed_ranking():
  # Ranked: +, -, +, -, +  (3 positives).
  scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
  pos = np.array([1, 0, 1, 0, 1], bool)
  rec, prec = metrics.precision_recall(scores, pos)
  np.testing.assert_allclose(rec, [1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
  np.testing.assert_allclose(prec, [1, 1 / 2, 2 / 3, 2 / 4, 3 / 5])
  # Envelope: recall 1/3 -> 1, 2/3 -> 2/3, 1 -> 3/5.
  assert metrics.average_precision(scores, pos, method="voc2012") == (
      pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 5))
  # 11 points: t=0..0.3 -> 1 (4 points), 0.4..0.6 -> 2/3 (3), 0.7..1 -> 3/5.
  assert metrics.average_precision(scores, pos, method="voc2007") == (
      pytest.approx((4 * 1 + 3 * 2 / 3 + 4 * 3 / 5) / 11))


def test_difficult_is_neither_positive_nor_negative():
  scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
  pos = np.array([0, 1, 0, 1, 0], bool)
  dif = np.array([1, 0, 0, 0, 0], bool)   # the top image is difficult
  for method in metrics.AP_METHODS:
    with_dif = metrics.average_precision(scores, pos, dif, method)
    dropped = metrics.average_precision(scores[1:], pos[1:], None, method)
    assert with_dif == pytest.approx(dropped)
    # As a negative it would cost; as a positive it would help.
    assert metrics.average_precision(scores, pos, None, method) < with_dif
  # Ranked after difficulty removal: +, -, +  -> 2012 AP = 1/2 + 1/2 * 2/3.
  assert metrics.average_precision(scores, pos, dif, "voc2012") == (
      pytest.approx(0.5 + 0.5 * 2 / 3))
  # A difficult image marked positive is still ignored.
  pos2 = pos.copy()
  pos2[0] = True
  assert metrics.average_precision(scores, pos2, dif, "voc2012") == (
      pytest.approx(0.5 + 0.5 * 2 / 3))


def test_recall_exactly_on_an_11_point_level():
  # 10 positives: the 3rd reaches recall 3/10 exactly.  In floats
  # 3/10 < 0.1 * 3, so ports comparing floats take the next positive's
  # precision at t = 0.3; the definition (recall >= t) takes this one's.
  pos = np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1], bool)
  scores = -np.arange(len(pos), dtype=float)
  rec, prec = metrics.precision_recall(scores, pos)
  assert rec[3] == 3 / 10 and 3 / 10 < 0.1 * 3
  envelope = [max(prec[j:]) for j in range(len(prec))]
  exact = np.mean([envelope[int(np.argmax(10 * rec >= k - 1e-9))]
                   for k in range(11)])
  float_port = np.mean([max(prec[rec >= t]) for t in np.arange(0, 1.1, 0.1)])
  assert envelope[3] == 3 / 4 and exact - float_port == pytest.approx(
      (3 / 4 - 10 / 17) / 11)
  assert metrics.average_precision(scores, pos, method="voc2007") == (
      pytest.approx(exact))
  assert metrics.average_precision(scores, pos, method="voc2007") == (
      pytest.approx(devkit_ap(scores, np.where(pos, 1, -1), 2007)))


@pytest.mark.parametrize("ties", [False, True])
def test_against_devkit_transcription(ties):
  rng = np.random.default_rng(1 + ties)
  for trial in range(150):
    n = int(rng.integers(2, 60))
    gt = rng.choice([1, -1, 0], size=n, p=[0.3, 0.55, 0.15])
    if not (gt > 0).any():
      gt[int(rng.integers(n))] = 1
    out = (rng.integers(0, 5, n).astype(float) if ties
           else rng.normal(size=n) + 0.7 * (gt > 0))
    for year, method in ((2007, "voc2007"), (2012, "voc2012")):
      ours = metrics.average_precision(out, gt > 0, gt == 0, method)
      assert ours == pytest.approx(devkit_ap(out, gt, year), abs=1e-12), (
          trial, year)


def test_against_scikit_learn():
  """scikit-learn's AP is the un-interpolated sum of precision at each
  recall step; VOC-2012's uses the monotone envelope.  On tie-free scores
  (difficult images left out, the devkit's behaviour) the envelope of
  scikit-learn's own PR curve gives VOC-2012 AP, and sklearn's AP is never
  above it, equal exactly when precision never rises along the ranking."""
  rng = np.random.default_rng(0)
  for _ in range(100):
    n = int(rng.integers(5, 80))
    y = rng.random(n) < 0.35
    y[0] = True
    s = rng.normal(size=n) + y
    voc2012 = metrics.average_precision(s, y, method="voc2012")
    precision, recall, _ = precision_recall_curve(y, s)
    order = np.argsort(recall, kind="stable")
    r, p = recall[order], precision[order]
    env = np.maximum.accumulate(p[::-1])[::-1]
    area = sum((r[i] - r[i - 1]) * env[i] for i in range(1, len(r)))
    assert voc2012 == pytest.approx(area)
    sk = average_precision_score(y, s)
    assert sk <= voc2012 + 1e-12
    _, prec = metrics.precision_recall(s, y)
    at_pos = prec[np.sort(y[np.argsort(-s)].nonzero()[0])]
    if np.all(np.diff(at_pos) <= 0):
      assert sk == pytest.approx(voc2012)
  # Perfect ranking: all AP variants are 1.
  y = np.array([1, 1, 0, 0, 0], bool)
  s = np.array([5.0, 4, 3, 2, 1])
  assert average_precision_score(y, s) == 1.0
  for m in metrics.AP_METHODS:
    assert metrics.average_precision(s, y, method=m) == 1.0


def test_mean_average_precision_and_errors():
  rng = np.random.default_rng(3)
  s = rng.normal(size=(40, 3))
  pos = rng.random((40, 3)) < 0.4
  pos[0] = True
  dif = (rng.random((40, 3)) < 0.1) & ~pos
  res = metrics.mean_average_precision(s, pos, dif, "voc2012",
                                       class_names=["a", "b", "c"])
  per = [metrics.average_precision(s[:, k], pos[:, k], dif[:, k], "voc2012")
         for k in range(3)]
  assert res["ap"] == pytest.approx(per)
  assert res["map"] == pytest.approx(np.mean(per))
  pos[:, 1] = False
  with pytest.raises(ValueError, match="class b: no .*positive"):
    metrics.mean_average_precision(s, pos, dif, class_names=["a", "b", "c"])
  with pytest.raises(ValueError, match="method"):
    metrics.average_precision(s[:, 0], pos[:, 0], method="voc2010")
  with pytest.raises(ValueError, match="NaN"):
    metrics.average_precision([np.nan, 1.0], [True, False])


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_mean_class_recall():
  y = np.array([0, 0, 0, 0, 1, 1, 2])
  p = np.array([0, 0, 0, 1, 1, 0, 2])
  # Recalls 3/4, 1/2, 1 -> mean 3/4 (accuracy would be 5/7).
  assert metrics.mean_class_recall(y, p) == pytest.approx(0.75)
  rng = np.random.default_rng(0)
  for _ in range(20):
    y = rng.integers(0, 6, 200)
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 7, 200))
    assert metrics.mean_class_recall(y, p) == pytest.approx(
        balanced_accuracy_score(y, p))
