"""The offline transfer datasets: deterministic, labelled as VOC labels."""

import numpy as np
import pytest
from PIL import Image

from vgg_jax.data import transfer_sets as ts

pytestmark = pytest.mark.skipif(
    not (ts.pathlib.Path(ts.FASHION_MNIST_DIR) /
         "t10k-images-idx3-ubyte.gz").exists(),
    reason="needs Debian's dataset-fashion-mnist")


def test_canvas_set_labels_follow_voc_rules_and_are_deterministic(tmp_path):
  kw = dict(seed=5, side=80, max_items=4)
  a = ts.write_canvas_set(tmp_path / "a", {"test": 30}, **kw)["test"]
  b = ts.write_canvas_set(tmp_path / "b", {"test": 30}, **kw)["test"]
  assert a == b
  for n in ("img_00000.jpg", "img_00029.jpg"):
    assert ((tmp_path / "a" / "test" / n).read_bytes() ==
            (tmp_path / "b" / "test" / n).read_bytes())
  assert a != ts.write_canvas_set(tmp_path / "c", {"test": 30}, seed=6,
                                  side=80)["test"]
  flags = [o["difficult"] for r in a["images"] for o in r["objects"]]
  assert any(flags) and not all(flags)
  for r in a["images"]:
    easy = {o["class"] for o in r["objects"] if not o["difficult"]}
    hard = {o["class"] for o in r["objects"] if o["difficult"]}
    assert set(r["positive"]) == easy and set(r["difficult"]) == hard - easy
    for o in r["objects"]:
      assert o["difficult"] == (o["side"] < 20 or o["visible"] < 0.5)
      x0, y0, x1, y1 = o["box"]
      assert 0 <= x0 < x1 <= 80 and 0 <= y0 < y1 <= 80
  img = ts.load_images(tmp_path / "a", "test", ["img_00000.jpg"])[0]
  assert img.shape == (80, 80, 3) and img.std() > 10
  assert ts.read_index(tmp_path / "a", "test") == a


def test_image_labels_rule():
  objs = [{"class": 1, "difficult": True}, {"class": 1, "difficult": False},
          {"class": 2, "difficult": True}]
  assert ts.image_labels(objs) == ([1], [2])


def test_digits_set(tmp_path):
  index = ts.write_digits_set(tmp_path, side=16)
  assert len(index["images"]) == 1797
  r = index["images"][10]
  img = np.asarray(Image.open(tmp_path / "all" / r["name"]))
  assert img.shape == (16, 16) and r["name"].startswith(f"{r['label']}/")
  counts = np.bincount([r["label"] for r in index["images"]])
  assert counts.min() >= 170
