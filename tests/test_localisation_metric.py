"""The ILSVRC localisation error (Appendix A.2): hand-computed cases and a
second implementation written differently (pixel sets, per-image loops in
the devkit's d(j, k) form) compared on random cases."""

import numpy as np
import pytest

from vgg_jax.localisation import metric as M


def _gt(boxes, labels, image_labels=None):
  return M.GroundTruth.make(boxes, labels, image_labels)


def test_top5_hand_computed():
  gt = {
      "a": _gt([[0, 0, 9, 9]], [1]),
      "b": _gt([[0, 0, 9, 9], [20, 20, 29, 29]], [2, 2]),
      "c": _gt([[0, 0, 9, 9]], [3]),
      "d": _gt([[0, 0, 1, 0]], [4]),
  }
  pred = {
      # right class on guess 3 with the exact box: right.
      "a": [(7, [0, 0, 9, 9]), (8, [0, 0, 9, 9]), (1, [0, 0, 9, 9])],
      # right class, matches the SECOND box of that class: right.
      "b": [(2, [21, 20, 30, 29])],
      # right box but the class is the sixth guess: ignored -> wrong.
      "c": [(0, [0, 0, 9, 9])] * 5 + [(3, [0, 0, 9, 9])],
      # IoU exactly 0.5 (a 2-pixel box against one of its pixels): right
      # under the devkit's >= 0.5.
      "d": [(4, [1, 0, 1, 0])],
  }
  r = M.top5_localisation_error(pred, gt)
  assert r.per_image == {"a": 0.0, "b": 0.0, "c": 1.0, "d": 0.0}
  assert r.error == 0.25 and r.num_images == 4
  # The paper's "above 0.5" would count "d" wrong.
  assert M.top5_localisation_error(pred, gt, rule="paper").error == 0.5
  # Blacklisting "c": 0 errors of 3 images.
  r = M.top5_localisation_error(pred, gt, blacklist=["c"])
  assert r.error == 0.0 and r.num_images == 3 and r.num_excluded == 1
  # Only one guess allowed: "a" becomes wrong.
  assert M.top5_localisation_error(pred, gt, max_guesses=1).per_image["a"] == 1


def test_top5_box_of_another_class_does_not_count():
  gt = {"x": _gt([[0, 0, 9, 9], [50, 50, 59, 59]], [1, 2], image_labels=[1])}
  # Guess class 1 with class 2's box: wrong; class 2 is not a label here.
  pred = {"x": [(1, [50, 50, 59, 59]), (2, [50, 50, 59, 59])]}
  assert M.top5_localisation_error(pred, gt).error == 1.0


def test_devkit_averages_over_several_labels():
  gt = {"x": _gt([[0, 0, 9, 9], [50, 50, 59, 59]], [1, 2])}
  pred = {"x": [(1, [0, 0, 9, 9])]}
  assert M.top5_localisation_error(pred, gt).error == 0.5


def test_errors_are_clear():
  gt = {"a": _gt([[0, 0, 9, 9]], [1])}
  with pytest.raises(ValueError, match="no prediction"):
    M.top5_localisation_error({}, gt)
  with pytest.raises(ValueError, match="not in the ground truth"):
    M.top5_localisation_error({"a": [], "z": []}, gt)
  with pytest.raises(ValueError, match="blacklisted ids"):
    M.top5_localisation_error({"a": []}, gt, blacklist=["q"])
  with pytest.raises(ValueError, match="at least one"):
    M.GroundTruth.make(np.zeros((0, 4)), [])


def test_centre_gt_protocol_hand_computed():
  gt = {"a": _gt([[0, 0, 9, 9], [30, 30, 39, 39]], [5, 5]),
        "b": _gt([[0, 0, 1, 0]], [6]),
        "c": _gt([[0, 0, 9, 9]], [7])}
  pred = {"a": [31, 30, 40, 39],  # matches the second box
          "b": [1, 0, 1, 0],      # IoU exactly 0.5
          "c": [20, 20, 29, 29]}  # no overlap
  r = M.centre_gt_localisation_error(pred, gt)
  assert r.per_image == {"a": 0.0, "b": 1.0, "c": 1.0}
  r = M.centre_gt_localisation_error(pred, gt, rule="devkit")
  assert r.per_image == {"a": 0.0, "b": 0.0, "c": 1.0}


# --- a second implementation, written differently --------------------------


def _pixels(box):
  x0, y0, x1, y1 = box
  return {(x, y) for x in range(x0, x1 + 1) for y in range(y0, y1 + 1)}


def _reference_top5(pred, gt):
  """The devkit's loops: e_i = sum_k min_j d(j, k) / n_i, with the overlap
  from explicit pixel sets and the >= 0.5 test as f_j = ov < 0.5."""
  total = 0.0
  for image_id, (gt_boxes, gt_box_labels, labels) in gt.items():
    guesses = pred[image_id][:5]
    e = 0
    for k in labels:
      d = []
      for cls, box in guesses:
        if cls != k:
          d.append(1)
          continue
        ovs = []
        for g, gl in zip(gt_boxes, gt_box_labels):
          if gl != k:
            continue
          p, q = _pixels(box), _pixels(g)
          ovs.append(len(p & q) / len(p | q) if p & q else -1)
        d.append(min(1 if ov < 0.5 else 0 for ov in ovs))
      e += min(d) if d else 1
    total += e / len(labels)
  return total / len(gt)


def _rand_box(rng):
  x = np.sort(rng.integers(0, 10, 2))
  y = np.sort(rng.integers(0, 10, 2))
  return [int(x[0]), int(y[0]), int(x[1]), int(y[1])]


def _guess(rng, boxes, labels):
  """Half the guesses: a ground-truth box nudged by up to 2 pixels per end
  (IoU near the 0.5 boundary for small boxes), with its class or another."""
  if rng.random() < 0.5:
    return int(rng.integers(0, 3)), _rand_box(rng)
  k = int(rng.integers(len(boxes)))
  b = np.array(boxes[k]) + rng.integers(-2, 3, 4)
  b = [int(min(b[0], b[2])), int(min(b[1], b[3])), int(max(b[0], b[2])),
       int(max(b[1], b[3]))]
  cls = labels[k] if rng.random() < 0.8 else int(rng.integers(0, 3))
  return cls, b


def test_top5_matches_reference_on_random_cases():
  rng = np.random.default_rng(0)
  scored = []
  for trial in range(60):
    gt_ref, gt, pred = {}, {}, {}
    for i in range(int(rng.integers(1, 8))):
      m = int(rng.integers(1, 4))
      boxes = [_rand_box(rng) for _ in range(m)]
      labels = [int(rng.integers(0, 3)) for _ in range(m)]
      image_labels = list(dict.fromkeys(labels))
      gt_ref[i] = (boxes, labels, image_labels)
      gt[i] = _gt(boxes, labels)
      pred[i] = [_guess(rng, boxes, labels)
                 for _ in range(int(rng.integers(0, 7)))]
    got = M.top5_localisation_error(pred, gt)
    assert got.error == pytest.approx(_reference_top5(pred, gt_ref)), trial
    scored += list(got.per_image.values())
  # The cases exercise right, wrong and (several labels) partial images.
  assert {0.0, 1.0} <= set(scored) and len(set(scored)) > 2


def test_merge_threshold_sweep_prefers_merging_a_cluster():
  # Five noisy boxes around the object, each scored 1, and one stray box
  # scored 2: without merging the stray wins; merged, the cluster (score 5)
  # does.  Class 1 is the classifier's top class.
  rng = np.random.default_rng(0)
  truth = np.array([20, 20, 59, 59])
  cluster = truth + rng.integers(-6, 7, (5, 4))
  stray = np.array([[0, 70, 15, 95]])
  dense = {"img": M.DensePredictions(
      np.concatenate([cluster, stray]), np.array([1, 1, 1, 1, 1, 2.0]),
      np.ones(6, np.int64), (1, 4))}
  gt = {"img": _gt([truth], [1])}
  sweep = M.merge_threshold_sweep(dense, gt, [0.0, 0.5, 1.0])
  assert sweep["errors"][0.0] == 1.0  # nothing merges: the stray box wins
  assert sweep["errors"][1.0] == 0.0
  assert sweep["best"] in (0.5, 1.0) and sweep["errors"][sweep["best"]] == 0
  guesses = M.merged_guesses(dense, threshold=1.0)["img"]
  assert [c for c, _ in guesses] == [1]  # class 4 predicted no box
