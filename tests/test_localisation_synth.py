"""The synthetic localisation set: exact boxes, determinism, and the real
annotation loader reading what it writes."""

import json
import pathlib

import numpy as np
import pytest

from vgg_jax.data import loc_records
from vgg_jax.localisation import synth

pytestmark = pytest.mark.skipif(
    not pathlib.Path(synth.FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz"
                     ).exists(), reason="needs Debian's dataset-fashion-mnist")


def test_render_box_is_exact_and_tight():
  items, _ = synth.load_fashion_mnist("test")
  photos = synth.backgrounds()
  cfg = synth.SynthConfig()
  for i in range(30):
    rng = np.random.default_rng([7, i])
    img, bg, box = synth.render(rng, items[i], photos, cfg)
    changed = np.any(img != bg, axis=-1)
    x0, y0, x1, y1 = box
    inside = np.zeros_like(changed)
    inside[y0:y1 + 1, x0:x1 + 1] = True
    assert not changed[~inside].any(), i  # nothing pasted outside the box
    # Tight: each edge of the box holds a pasted pixel.  (A paste that
    # happens to equal the background after rounding could hide one; a
    # random colour over a photo makes that vanishingly rare.)
    assert changed[y0, x0:x1 + 1].any() and changed[y1, x0:x1 + 1].any()
    assert changed[y0:y1 + 1, x0].any() and changed[y0:y1 + 1, x1].any()
    assert cfg.min_item // 2 <= max(x1 - x0 + 1, y1 - y0 + 1) <= cfg.max_item


def test_dataset_written_read_back_and_deterministic(tmp_path):
  a = synth.make_dataset(tmp_path / "a", num_train=12, num_val=6, seed=3)
  b_meta = synth.write_split(tmp_path / "b", "train", 12, seed=3)
  assert a["splits"]["train"]["records"] == 12
  assert a["splits"]["validation"]["records"] == 6
  assert a["splits"]["train"]["counts"]["images_with_boxes"] == 12
  for m in b_meta:  # same seed: identical files
    cls = synth.CLASS_NAMES[m["label"]]
    for ext in (".jpg", ".xml"):
      rel = pathlib.Path("train", cls, m["image_id"] + ext)
      assert (tmp_path / "a" / rel).read_bytes() == (
          tmp_path / "b" / rel).read_bytes()
  src = loc_records.LocRecordSource(tmp_path / "a" / "train.array_record")
  by_id = {m["image_id"]: m for m in b_meta}
  for i in range(len(src)):
    r = src[i]
    m = by_id[r["image_id"]]
    assert r["label"] == m["label"]
    np.testing.assert_array_equal(r["boxes"], [m["box"]])
    assert (r["height"], r["width"]) == (64, 64)
  index = json.loads((tmp_path / "a" / "class_index.json").read_text())
  assert index == {n: i for i, n in enumerate(synth.CLASS_NAMES)}
  # The classification folder source reads the same labels.
  from vgg_jax import input_pipeline
  folder = input_pipeline.FolderImageSource(tmp_path / "a", "train")
  assert len(folder) == 12
  for i in range(len(folder)):
    label, name = folder.label_and_name(i)
    assert label == by_id[pathlib.Path(name).stem]["label"]
  c = synth.write_split(tmp_path / "c", "train", 3, seed=4)
  assert [m["box"] for m in c] != [m["box"] for m in b_meta[:3]]


def test_command_line(tmp_path):
  assert synth.main(["--out", str(tmp_path), "--train", "2", "--val", "2",
                     "--no_records"]) == 0
  assert len(list((tmp_path / "validation").rglob("*.xml"))) == 2
  assert synth.main(["--out", str(tmp_path), "--min_item", "80"]) == 2


def test_contrast_colour_stands_out_of_the_background():
  """colour="contrast": each channel of the item's colour lies in the half of
  the range away from the background's mean under the item.  A fully opaque
  item (all 255) makes every pasted pixel the colour itself and the box the
  whole pasted rectangle, so both are read back from the image."""
  photos = synth.backgrounds()
  solid = np.full((28, 28), 255, np.uint8)
  cfg = synth.SynthConfig(min_item=24, max_item=56, colour="contrast")
  seen_bright = seen_dark = 0
  for i in range(40):
    img, bg, box = synth.render(np.random.default_rng([9, i]), solid, photos,
                                cfg)
    x0, y0, x1, y1 = box
    colour = img[y0:y1 + 1, x0:x1 + 1].reshape(-1, 3)
    assert (colour == colour[0]).all()  # one flat colour
    bright = bg[y0:y1 + 1, x0:x1 + 1].reshape(-1, 3).mean(0) >= 128
    assert (colour[0][bright] <= 80).all(), (i, colour[0], bright)
    assert (colour[0][~bright] >= 175).all(), (i, colour[0], bright)
    seen_bright += bright.sum()
    seen_dark += (~bright).sum()
  assert seen_bright and seen_dark  # both branches exercised
  with pytest.raises(ValueError, match="colour"):
    synth.render(np.random.default_rng(0), solid, photos,
                 synth.SynthConfig(colour="pastel"))
