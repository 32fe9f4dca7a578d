"""Linear SVMs, C on a held-out 20%, the Caltech splits, the svm command."""

import json
import pathlib
import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.metrics import balanced_accuracy_score
from sklearn.svm import LinearSVC

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from voc_devkit_reference import devkit_ap  # noqa: E402

from vgg_jax.transfer import __main__ as cli  # noqa: E402
from vgg_jax.transfer import metrics  # noqa: E402
from vgg_jax.transfer import store  # noqa: E402
from vgg_jax.transfer import svm  # noqa: E402


@pytest.fixture(scope="module")
def digits():
  d = load_digits()
  x = d.data / np.linalg.norm(d.data, axis=1, keepdims=True)
  return x.astype(np.float32), d.target


def test_caltech_splits(digits):
  _, y = digits
  splits = svm.caltech_splits(y, num_train=30, max_test=50, num_splits=3,
                              seed=7)
  assert len(splits) == 3
  for train, test in splits:
    assert not set(train) & set(test)
    for c in range(10):
      assert (y[train] == c).sum() == 30
      assert (y[test] == c).sum() == 50
  assert not np.array_equal(splits[0][0], splits[1][0])
  again = svm.caltech_splits(y, 30, 50, 3, seed=7)
  assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
             for a, b in zip(splits, again))
  # Caltech-256 style: the rest is the test set.
  for train, test in svm.caltech_splits(y, 60, None, 1, seed=0):
    assert len(train) + len(test) == len(y)
  with pytest.raises(ValueError, match="no more than 30 images"):
    svm.caltech_splits(np.r_[y, 99], 30, 50)


def test_holdout_is_a_stratified_seeded_fifth(digits):
  _, y = digits
  fit, val = svm.holdout_split(y, 0.2, seed=3)
  assert not set(fit) & set(val) and len(fit) + len(val) == len(y)
  for c in range(10):
    frac = (y[val] == c).sum() / (y == c).sum()
    assert abs(frac - 0.2) < 0.02
  np.testing.assert_array_equal(val, svm.holdout_split(y, 0.2, seed=3)[1])
  assert not np.array_equal(val, svm.holdout_split(y, 0.2, seed=4)[1])


def test_multiclass_c_is_the_held_out_best_then_refit_on_all(digits):
  x, y = digits
  x, y = x[:600], y[:600]
  grid = (0.01, 1.0, 100.0)
  res = svm.fit_multiclass(x, y, grid, seed=0)
  fit, val = svm.holdout_split(y, 0.2, seed=0)
  for c in grid:
    m = LinearSVC(C=c, max_iter=10000, random_state=0).fit(x[fit], y[fit])
    assert res.validation[c] == pytest.approx(
        balanced_accuracy_score(y[val], m.predict(x[val])))
  assert res.c == max(grid, key=lambda c: (res.validation[c], -c))
  assert res.validation[0.01] < res.validation[res.c]
  ref = LinearSVC(C=res.c, max_iter=10000, random_state=0).fit(x, y)
  np.testing.assert_allclose(res.model.decision_function(x),
                             ref.decision_function(x), atol=1e-6)


def test_multilabel_difficult_left_out_of_training():
  rng = np.random.default_rng(0)
  n = 200
  pos = rng.random((n, 2)) < 0.4
  x = (pos * 1.0 + rng.normal(0, 0.6, (n, 2))).astype(np.float32)
  dif = (rng.random((n, 2)) < 0.15) & ~pos
  # Difficult images look strongly positive: training on them as negatives
  # would change the SVM.
  x[dif[:, 0], 0] += 3
  res = svm.fit_multilabel(x, pos, dif, (0.1, 1.0), seed=0,
                           c_selection="shared")
  assert res.c[0] == res.c[1]
  for k in range(2):
    keep = ~dif[:, k]
    ref = LinearSVC(C=res.c[k], max_iter=10000, random_state=0).fit(
        x[keep], pos[keep, k])
    np.testing.assert_allclose(res.models[k].decision_function(x),
                               ref.decision_function(x), atol=1e-6)
  with pytest.raises(ValueError, match="at least 2"):
    svm.fit_multilabel(x, np.zeros_like(pos), dif)


def test_caltech_protocol_on_digits(digits):
  x, y = digits
  res = svm.run_caltech(x, y, num_train=30, max_test=50, num_splits=3,
                        seed=0, c_grid=(1.0, 10.0))
  m = res["mean_class_recall"]
  assert len(m["per_split"]) == 3
  assert m["mean"] == pytest.approx(np.mean(m["per_split"]))
  assert m["std"] == pytest.approx(np.std(m["per_split"]))
  assert 0.85 < m["mean"] <= 1.0
  # Undecodable images are drawn like any other and, when tested, missed.
  failed = np.array([0] * 40)
  res_f = svm.run_caltech(x, y, num_train=30, max_test=None, num_splits=1,
                          seed=0, c_grid=(10.0,), failed_labels=failed)
  d = res_f["splits"][0]
  assert d["failed_train"] + d["failed_test"] == 40 and d["failed_test"] > 0
  assert d["num_test"] == len(y) + 40 - 300


def _write_voc_like(tmp, failed_positive):
  rng = np.random.default_rng(0)

  def make(n, prefix):
    pos = rng.random((n, 2)) < 0.5
    pos[0] = [True, False]
    pos[1] = [False, True]
    pos[2] = [False, False]
    dif = (rng.random((n, 2)) < 0.1) & ~pos
    x = np.concatenate([pos.astype(np.float32),
                        rng.normal(0, 0.01, (n, 3)).astype(np.float32)], 1)
    recs = [{"name": f"{prefix}{i}", "positive": list(np.flatnonzero(p)),
             "difficult": list(np.flatnonzero(d))}
            for i, (p, d) in enumerate(zip(pos, dif))]
    return x, recs, pos, dif

  x, recs, _, _ = make(80, "tr")
  store.write_split(tmp, "trainval", x, recs, settings={"k": 1},
                    task="multilabel", classes=["c0", "c1"])
  x, recs, pos, dif = make(60, "te")
  if failed_positive:
    recs.append({"name": "broken.jpg", "positive": [0], "difficult": [],
                 "error": "cannot identify image file"})
  store.write_split(tmp, "test", x, recs, settings={"k": 1},
                    task="multilabel", classes=["c0", "c1"])
  return pos, dif


def test_svm_command_voc(tmp_path):
  pos, dif = _write_voc_like(tmp_path / "f", failed_positive=True)
  res = cli.main(["svm", "voc", "--features", str(tmp_path / "f"),
                  "--output", str(tmp_path / "r"), "--ap", "voc2012",
                  "--c_grid", "1,10"])
  # Class 1: separable, AP 1.  Class 0: its n positives ranked first, then
  # every negative, then the undecodable positive last (rank N + 1).
  n = int((pos[:, 0] & ~dif[:, 0]).sum())
  total = int((~dif[:, 0]).sum()) + 1
  assert res["ap"][1] == pytest.approx(1.0)
  assert res["ap"][0] == pytest.approx(n / (n + 1) + (n + 1) / total /
                                       (n + 1))
  assert res["map"] == pytest.approx(np.mean(res["ap"]))
  assert res["failed_test"] == 1 and res["failed_test_names"] == [
      "broken.jpg"]
  # The saved scores give the same APs under the devkit's own logic.
  z = np.load(tmp_path / "r" / "scores.npz")
  assert list(z["names"][-1:]) == ["broken.jpg"] and z["scores"][-1, 0] == (
      -np.inf)
  for k in range(2):
    gt = np.where(z["difficult"][:, k], 0, np.where(z["positive"][:, k], 1,
                                                    -1))
    assert devkit_ap(z["scores"][:, k], gt, 2012) == pytest.approx(
        res["ap"][k])
  saved = json.loads((tmp_path / "r" / "results.json").read_text())
  assert saved["map"] == pytest.approx(res["map"])
  md = (tmp_path / "r" / "results.md").read_text()
  assert f"{100 * res['map']:.2f}%" in md and "| c0 |" in md


def test_svm_command_caltech_and_errors(tmp_path, digits):
  x, y = digits
  recs = [{"name": f"d{i}", "label": int(c)} for i, c in enumerate(y)]
  store.write_split(tmp_path / "f", "all", x, recs, settings={"raw": True},
                    task="multiclass", classes=[str(i) for i in range(10)])
  res = cli.main(["svm", "caltech", "--features", str(tmp_path / "f"),
                  "--output", str(tmp_path / "r"), "--num_train", "30",
                  "--max_test", "50", "--c_grid", "10", "--num_splits", "2"])
  direct = svm.run_caltech(x, y, num_train=30, max_test=50, num_splits=2,
                           seed=0, c_grid=(10.0,))
  assert res["mean_class_recall"]["per_split"] == pytest.approx(
      direct["mean_class_recall"]["per_split"])
  for s in range(2):
    z = np.load(tmp_path / "r" / f"predictions_split{s}.npz")
    assert len(z["names"]) == 500
    assert balanced_accuracy_score(z["label"], z["predicted"]) == (
        pytest.approx(res["mean_class_recall"]["per_split"][s]))
  md = (tmp_path / "r" / "results.md").read_text()
  assert "± " in md and "Mean class recall" in md
  with pytest.raises(SystemExit, match="no finished split 'nope'"):
    cli.main(["svm", "caltech", "--features", str(tmp_path / "f"),
              "--output", str(tmp_path / "r2"), "--splits", "nope",
              "--preset", "caltech101"])
  with pytest.raises(SystemExit, match="multilabel"):
    cli.main(["svm", "voc", "--features", str(tmp_path / "f"),
              "--output", str(tmp_path / "r3"), "--train", "all",
              "--test", "all"])
  assert metrics.mean_class_recall(y, y) == 1.0


def test_pixel_baseline_names_undecodable_and_resumes(tmp_path):
  from vgg_jax.data import transfer_sets  # pylint: disable=g-import-not-at-top
  from vgg_jax.transfer import pixels  # pylint: disable=g-import-not-at-top
  root = tmp_path / "set"
  (root / "s").mkdir(parents=True)
  rng = np.random.default_rng(0)
  images = []
  for i in range(5):
    arr = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    from PIL import Image  # pylint: disable=g-import-not-at-top
    Image.fromarray(arr).save(root / "s" / f"{i}.png")
    images.append({"name": f"{i}.png", "label": i % 2})
  (root / "s" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
  (root / "s.json").write_text(json.dumps(
      {"task": "multiclass", "classes": ["a", "b"], "images": images}))
  # Interrupted after one chunk of two: the rerun does the rest only.
  w = store.SplitWriter(tmp_path / "f", "s", settings={
      "descriptor": "raw_pixels", "side": 4, "mode": "L", "flip": True,
      "image_set": str(root)}, task="multiclass", classes=["a", "b"],
                        names=[r["name"] for r in images])
  first = [pixels.pixel_descriptor(Image.open(root / "s" / n), 4)
           for n in ("0.png", "1.png")]
  w.add_chunk(images[:2], np.stack(first))
  w.close()
  cli.main(["pixels", "--set", str(root), "--splits", "s", "--output",
            str(tmp_path / "f"), "--side", "4"])
  got = store.load_split(tmp_path / "f", "s")
  assert got.names == ["0.png", "1.png", "2.png", "4.png"]
  assert [f["name"] for f in got.failed] == ["3.png"]
  img = np.asarray(Image.open(root / "s" / "4.png").convert("L").resize(
      (4, 4), Image.BILINEAR), np.float64)
  ref = (img + img[:, ::-1]).reshape(-1)
  np.testing.assert_allclose(got.features[3], ref / np.linalg.norm(ref),
                             rtol=1e-5)
  assert transfer_sets.read_index(root, "s")["classes"] == ["a", "b"]
