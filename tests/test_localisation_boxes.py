"""Boxes (Appendix A): devkit IoU, target encoding, transforms, crop rule,
OverFeat merge, against hand-computed cases and pixel-set reimplementations."""

import numpy as np
import pytest

from vgg_jax.localisation import boxes as B


def _pixels(box):
  """The set of integer pixels an inclusive-end integer box covers."""
  x0, y0, x1, y1 = (int(v) for v in box)
  return {(x, y) for x in range(x0, x1 + 1) for y in range(y0, y1 + 1)}


def test_iou_hand_computed():
  # Same box: 1.  A 1-pixel box: area 1, not 0 (inclusive ends).
  assert B.iou([0, 0, 0, 0], [0, 0, 0, 0]) == 1.0
  assert B.box_area([3, 4, 3, 4]) == 1
  # [0..1]x[0..0] (2 px) vs [1..1]x[0..0] (1 px): 1 / 2.
  assert B.iou([0, 0, 1, 0], [1, 0, 1, 0]) == 0.5
  # Two 10x10 boxes shifted by 5 columns: inter 5*10=50, union 150.
  assert B.iou([0, 0, 9, 9], [5, 0, 14, 9]) == pytest.approx(50 / 150)
  # Touching edges share no pixel in the inclusive convention? They do when
  # xmax of one equals xmin of the other: one column in common.
  assert B.iou([0, 0, 4, 0], [4, 0, 8, 0]) == pytest.approx(1 / 9)
  assert B.iou([0, 0, 4, 0], [5, 0, 8, 0]) == 0.0


def test_iou_matches_pixel_sets_on_random_boxes():
  rng = np.random.default_rng(0)
  for _ in range(300):
    a = np.sort(rng.integers(0, 12, (2, 2)), axis=0).T.reshape(-1)[[0, 2, 1, 3]]
    b = np.sort(rng.integers(0, 12, (2, 2)), axis=0).T.reshape(-1)[[0, 2, 1, 3]]
    pa, pb = _pixels(a), _pixels(b)
    want = len(pa & pb) / len(pa | pb)
    assert B.iou(a, b) == pytest.approx(want), (a, b)
  m = B.iou_matrix([[0, 0, 3, 3], [2, 2, 5, 5]], [[0, 0, 3, 3]])
  assert m.shape == (2, 1) and m[0, 0] == 1 and m[1, 0] == pytest.approx(4 / 28)


@pytest.mark.parametrize("norm", B.NORMALISATIONS)
def test_encode_decode_round_trip(norm):
  rng = np.random.default_rng(1)
  xy = rng.uniform(-10, 60, (50, 2))
  wh = rng.uniform(1, 40, (50, 2))
  boxes = np.concatenate([xy, xy + wh - 1], axis=1)
  t = B.encode(boxes, (48, 64), norm)
  np.testing.assert_allclose(B.decode(t, (48, 64), norm), boxes, atol=1e-9)


def test_encode_values_by_hand():
  # Box covering columns 0..31 and rows 16..47 of a 64x64 crop: centre
  # (16, 32), size 32x32.
  box = [0, 16, 31, 47]
  np.testing.assert_allclose(B.encode(box, (64, 64), "crop_fraction"),
                             [0.25, 0.5, 0.5, 0.5])
  np.testing.assert_allclose(B.encode(box, (64, 64), "centred_log"),
                             [-0.25, 0.0, np.log(0.5), np.log(0.5)])
  with pytest.raises(ValueError, match="normalisation"):
    B.encode(box, (64, 64), "nope")


def test_transforms_move_the_pixels():
  # Build a mask with a box, apply the image transform to the mask, and
  # check the transformed box is the mask's tight box.
  img = np.zeros((20, 30), bool)
  box = np.array([4, 3, 12, 9])
  img[3:10, 4:13] = True
  # Flip.
  fl = img[:, ::-1]
  ys, xs = np.nonzero(fl)
  np.testing.assert_array_equal(B.flip_horizontal(box, 30),
                                [xs.min(), ys.min(), xs.max(), ys.max()])
  # Crop (shift only; a cut box keeps its extent).
  np.testing.assert_array_equal(B.crop(box, top=5, left=8), [-4, -2, 4, 4])
  # Integer upscale by 2 with nearest-neighbour pixels replicated.
  up = np.repeat(np.repeat(img, 2, 0), 2, 1)
  ys, xs = np.nonzero(up)
  np.testing.assert_allclose(B.rescale(box, (20, 30), (40, 60)),
                             [xs.min(), ys.min(), xs.max(), ys.max()])
  np.testing.assert_allclose(B.rescale(B.rescale(box, (20, 30), (33, 47)),
                                       (33, 47), (20, 30)), box)


def test_visible_fraction_and_crop_target():
  # 10x10 box, crop of 10x10 at the origin, box shifted half out.
  boxes = np.array([[5, 0, 14, 9],    # 50% inside
                    [7, 0, 16, 9],    # 30% inside
                    [0, 0, 3, 3]])    # 100% inside, 16 px
  vis = B.visible_fraction(boxes, (10, 10))
  np.testing.assert_allclose(vis, [0.5, 0.3, 1.0])
  t = B.crop_target(boxes, (10, 10))
  assert t.valid and t.index == 0  # 50 visible px beats 16
  np.testing.assert_array_equal(t.box, boxes[0])  # not clipped by default
  t = B.crop_target(boxes, (10, 10), clip_to_crop=True)
  np.testing.assert_array_equal(t.box, [5, 0, 9, 9])
  t = B.crop_target(boxes, (10, 10), min_visible=0.6)
  assert t.valid and t.index == 2
  t = B.crop_target(boxes, (10, 10), multi_box="first", min_visible=0.3)
  assert t.index == 0
  t = B.crop_target(boxes, (10, 10), box_labels=[1, 2, 1], label=2)
  assert not t.valid  # the only class-2 box is 30% visible
  t = B.crop_target(boxes, (10, 10), box_labels=[1, 2, 1], label=2,
                    min_visible=0.3)
  assert t.valid and t.index == 1


def _reference_merge(boxes, scores, thr):
  """Differently written greedy merge: clusters as member lists, full rescan
  of every pair each round, match score computed from scratch."""
  clusters = [[i] for i in range(len(boxes))]
  boxes = np.asarray(boxes, float)

  def mean(c):
    return boxes[c].mean(axis=0)

  def score(p, q):
    cp, cq = mean(p), mean(q)
    wp, hp = cp[2] - cp[0] + 1, cp[3] - cp[1] + 1
    wq, hq = cq[2] - cq[0] + 1, cq[3] - cq[1] + 1
    d = np.hypot(cp[0] + wp / 2 - cq[0] - wq / 2, cp[1] + hp / 2 - cq[1] - hq / 2)
    side = (np.sqrt(wp * hp) + np.sqrt(wq * hq)) / 2
    iw = min(cp[2], cq[2]) - max(cp[0], cq[0]) + 1
    ih = min(cp[3], cq[3]) - max(cp[1], cq[1]) + 1
    inter = iw * ih if iw > 0 and ih > 0 else 0
    ov = inter / (wp * hp + wq * hq - inter)
    return d / side + 1 - ov

  while len(clusters) > 1:
    best = None
    for a in range(len(clusters)):
      for b in range(a + 1, len(clusters)):
        s = score(clusters[a], clusters[b])
        key = (s, min(clusters[a]), min(clusters[b]))
        if best is None or key < best[0]:
          best = (key, a, b)
    if best[0][0] > thr:
      break
    _, a, b = best
    clusters[a] = clusters[a] + clusters[b]
    del clusters[b]
  out = sorted(((sum(scores[i] for i in c), mean(c), len(c))
                for c in clusters), key=lambda t: -t[0])
  return out


def test_greedy_merge_by_hand():
  boxes = [[0, 0, 9, 9], [2, 0, 11, 9], [50, 50, 59, 59]]
  m = B.greedy_merge(boxes, [1.0, 2.0, 0.5], threshold=0.8)
  # The first two (IoU 80/120, centres 2 px apart, side 10: 0.2 + 1/3) merge;
  # the far one stays alone.
  assert len(m.boxes) == 2
  np.testing.assert_allclose(m.boxes[0], [1, 0, 10, 9])
  assert m.scores[0] == 3.0 and m.counts[0] == 2
  np.testing.assert_allclose(m.boxes[1], boxes[2])
  # A threshold below 0.2 + 1/3 merges nothing.
  assert len(B.greedy_merge(boxes, [1, 2, 0.5], threshold=0.5).boxes) == 3


def test_greedy_merge_matches_reference_on_random_sets():
  rng = np.random.default_rng(3)
  for trial in range(40):
    n = rng.integers(1, 12)
    xy = rng.uniform(0, 40, (n, 2))
    wh = rng.uniform(4, 30, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.uniform(0, 1, n)
    thr = rng.uniform(0.2, 1.5)
    got = B.greedy_merge(boxes, scores, threshold=thr)
    want = _reference_merge(boxes, scores, thr)
    assert len(got.boxes) == len(want), trial
    for k, (s, box, cnt) in enumerate(want):
      assert got.scores[k] == pytest.approx(s)
      np.testing.assert_allclose(got.boxes[k], box, atol=1e-9)
      assert got.counts[k] == cnt


def test_union_and_top_k():
  a = ([[0, 0, 9, 9]], [1.0], [3])
  b = ([[1, 0, 10, 9], [30, 30, 39, 39]], [2.0, 0.1], [3, 7])
  bx, sc, cl = B.union(a, b)
  assert bx.shape == (3, 4) and list(cl) == [3, 3, 7]
  top = B.top_k_localisations(bx, sc, cl, [7, 3, 5], threshold=0.8)
  assert [t[0] for t in top] == [7, 3]  # class 5 has no box: no guess
  np.testing.assert_allclose(top[1][1], [0.5, 0, 9.5, 9])
  assert top[1][2] == pytest.approx(3.0)
  with pytest.raises(ValueError, match="boxes"):
    B.union(([[0, 0, 1, 1]], [1.0, 2.0], [0]))


def test_centre_box():
  np.testing.assert_allclose(B.centre_box((10, 20), 0.5), [5, 2.5, 14, 6.5])
  np.testing.assert_allclose(B.centre_box((10, 20), 1.0), [0, 0, 19, 9])
  with pytest.raises(ValueError, match="fraction"):
    B.centre_box((10, 20), 0)


def test_to_crop_frame_follows_the_real_preprocessing():
  """A box drawn as a mask goes through vgg_jax.preprocess's own rescale,
  crop and flip; the mask's tight box must agree with the computed box to
  within the resampling's one pixel."""
  from vgg_jax import preprocess
  rng = np.random.default_rng(5)
  checked = 0
  for trial in range(30):
    h, w = (int(v) for v in rng.integers(60, 200, 2))
    x0, x1 = np.sort(rng.integers(0, w, 2))
    y0, y1 = np.sort(rng.integers(0, h, 2))
    if x1 - x0 < 8 or y1 - y0 < 8:
      continue
    mask = np.zeros((h, w, 3), np.uint8)
    mask[y0:y1 + 1, x0:x1 + 1] = 255
    side = int(rng.integers(48, 120))
    img = preprocess.rescale_shorter_side(mask, side)
    crop = 40
    top, left = preprocess.random_crop_offsets(img.shape, crop, rng)
    img = img[top:top + crop, left:left + crop]
    flip = bool(rng.integers(2))
    if flip:
      img = preprocess.horizontal_flip(img)
    got = B.to_crop_frame([x0, y0, x1, y1], (h, w),
                          preprocess.rescaled_size(h, w, side), top=top,
                          left=left, crop_hw=(crop, crop), flip=flip)
    on = img[..., 0] >= 128
    if not on.any():
      assert B.visible_fraction(got, (crop, crop)) < 0.2, trial
      continue
    ys, xs = np.nonzero(on)
    seen = [xs.min(), ys.min(), xs.max(), ys.max()]
    np.testing.assert_allclose(B.clip(got, (crop, crop)), seen, atol=1.0,
                               err_msg=str(trial))
    checked += 1
  assert checked >= 8  # enough boxes landed in their crops to mean something
