"""Descriptor extraction (Appendix B) through the dense engine, checked
against a per-image computation written out here: each image run alone
through ``model.penultimate``, mean over positions, its mirror image's,
scales averaged or stacked, L2 in numpy, nets stacked."""

import json

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from vgg_jax import conventions
from vgg_jax import preprocess
from vgg_jax import weights
from vgg_jax.models import create_model
from vgg_jax.transfer import __main__ as cli
from vgg_jax.transfer import descriptor
from vgg_jax.transfer import extract
from vgg_jax.transfer import sources
from vgg_jax.transfer import store

KW = dict(name="A", width_mult=0.125, fc_width=32, num_classes=5,
          head_window=1)
CONVENTION = conventions.InputConvention("RGB", 1 / 255, (0.4, 0.45, 0.5),
                                         (0.22, 0.23, 0.24))


def _save_net(path, seed):
  model = create_model(rngs=nnx.Rngs(seed), init="he", **KW)
  weights.save_pretrained(path, model, model_kwargs=KW,
                          input_convention=CONVENTION, source="test",
                          extra={"crop_size": 32})
  return model


def _photos():
  """Real photos of different aspect ratios, shrunk (fast)."""
  from skimage import data as skdata
  out = []
  for img, (h, w) in ((skdata.coffee(), (36, 54)),
                      (skdata.chelsea(), (50, 33)),
                      (skdata.astronaut()[100:400, 50:250], (40, 34))):
    out.append(np.asarray(Image.fromarray(img).resize((w, h),
                                                      Image.BILINEAR)))
  return out


@pytest.fixture(scope="module")
def image_set(tmp_path_factory):
  """A 'set' layout: 5 photos, person boxes, one undecodable file."""
  root = tmp_path_factory.mktemp("set")
  (root / "all").mkdir()
  recs = []
  for i, img in enumerate(_photos()):
    name = f"p{i}.png"
    Image.fromarray(img).save(root / "all" / name)
    h, w = img.shape[:2]
    recs.append({"name": name, "label": i % 3,
                 "person_box": [2 + i, 1, w - 3, h - 2 - i]})
  (root / "all" / "broken.png").write_bytes(b"\x89PNG not really")
  recs.insert(2, {"name": "broken.png", "label": 1,
                  "person_box": [0, 0, 5, 5]})
  (root / "all.json").write_text(json.dumps(
      {"task": "multiclass", "classes": ["a", "b", "c"], "images": recs}))
  return root


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
  base = tmp_path_factory.mktemp("nets")
  _save_net(base / "n1", 1)
  _save_net(base / "n2", 2)
  return [str(base / "n1"), str(base / "n2")]


def _reference(models, img, scales, aggregation):
  """The descriptor of one image, each net run on it alone."""
  per_net = []
  for model in models:
    per_q = []
    for q in scales:
      x = preprocess.rescale_shorter_side(img, q).astype(np.float32)
      x = (x / 255 - np.array([0.4, 0.45, 0.5])) / np.array([0.22, 0.23, 0.24])
      x = x[None].astype(np.float32)
      # The image and its mirror image, each alone (no canvas, no mask).
      both = np.asarray(model.penultimate(np.concatenate([x, x[:, :, ::-1]])))
      per_q.append(both.mean(axis=(1, 2)).mean(axis=0))
    v = (np.mean(per_q, axis=0) if aggregation == "average"
         else np.concatenate(per_q))
    per_net.append(v / np.linalg.norm(v))
  return np.concatenate(per_net)


# Two nets, the box and stacked scales: every part of the extraction at
# once.  (Averaging the scales instead is one line of descriptor.py, checked
# by hand in tests/test_transfer_descriptor.py; a second extraction here
# cost 68 s of the suite.)
@pytest.mark.parametrize("aggregation,num_nets,box", [("stack", 2, True)])
def test_extraction_equals_per_image(image_set, nets, tmp_path, aggregation,
                                     num_nets, box):
  loaded = extract.load_nets(nets[:num_nets], ["D", "E"][:num_nets])
  scales = (32, 45)
  spec = descriptor.DescriptorSpec(scales=scales, aggregation=aggregation,
                                   nets=tuple(n.name for n in loaded),
                                   box=box)
  images = sources.read_images("set", image_set, "all")
  extract.extract_split(images, "all", tmp_path, loaded, spec, batch_size=4,
                        bucket_step=32, chunk_size=3, show_progress=False)
  feats = store.load_split(tmp_path, "all")
  assert [f["name"] for f in feats.failed] == ["broken.png"]
  assert feats.failed[0]["error"].startswith("DecodeError")
  assert feats.names == [f"p{i}.png" for i in range(3)]
  assert feats.features.shape == (3, spec.dim(32))
  boxes = {r["name"]: r["person_box"] for r in
           json.loads((image_set / "all.json").read_text())["images"]}
  models = [n.model for n in loaded]
  for name, row in zip(feats.names, feats.features):
    img = np.asarray(Image.open(image_set / "all" / name).convert("RGB"))
    want = _reference(models, img, scales, aggregation)
    if box:
      x0, y0, x1, y1 = boxes[name]
      want = np.concatenate([want, _reference(
          models, img[y0:y1 + 1, x0:x1 + 1], scales, aggregation)])
    np.testing.assert_allclose(row, want, atol=2e-5, rtol=1e-4)


def test_resume_after_interruption_gives_the_same_file(image_set, nets,
                                                       tmp_path):
  loaded = extract.load_nets(nets[:1], ["D"])
  spec = descriptor.DescriptorSpec(scales=(32,), aggregation="stack",
                                   nets=("D",))
  images = sources.read_images("set", image_set, "all")
  kw = dict(batch_size=4, bucket_step=32, chunk_size=2, show_progress=False)
  assert extract.extract_split(images, "all", tmp_path / "cut", loaded, spec,
                               max_chunks=1, **kw) is None
  manifest = json.loads((tmp_path / "cut" / "all.parts" / "manifest.json")
                        .read_text())
  assert len(manifest["chunks"]) == 1
  assert not (tmp_path / "cut" / "all.json").exists()
  # Other settings are refused rather than mixed into the same file.
  other = descriptor.DescriptorSpec(scales=(48,), nets=("D",))
  with pytest.raises(store.SettingsMismatch):
    extract.extract_split(images, "all", tmp_path / "cut", loaded, other,
                          **kw)
  extract.extract_split(images, "all", tmp_path / "cut", loaded, spec, **kw)
  extract.extract_split(images, "all", tmp_path / "whole", loaded, spec,
                        **kw)
  assert ((tmp_path / "cut" / "all.npy").read_bytes()
          == (tmp_path / "whole" / "all.npy").read_bytes())
  assert (json.loads((tmp_path / "cut" / "all.json").read_text())
          == json.loads((tmp_path / "whole" / "all.json").read_text()))
  assert not (tmp_path / "cut" / "all.parts").exists()


def test_box_without_a_box_is_named(tmp_path, nets):
  root = tmp_path / "s"
  (root / "all").mkdir(parents=True)
  Image.fromarray(_photos()[1]).save(root / "all" / "a.png")
  (root / "all.json").write_text(json.dumps(
      {"task": "multiclass", "classes": ["x"],
       "images": [{"name": "a.png", "label": 0}]}))
  loaded = extract.load_nets(nets[:1], ["D"])
  spec = descriptor.DescriptorSpec(scales=(32,), nets=("D",), box=True)
  extract.extract_split(sources.read_images("set", root, "all"), "all",
                        tmp_path / "f", loaded, spec, show_progress=False)
  feats = store.load_split(tmp_path / "f", "all")
  assert feats.failed[0]["name"] == "a.png"
  assert "person box" in feats.failed[0]["error"]


def test_scale_below_the_net_input_is_refused(image_set, nets, tmp_path):
  loaded = extract.load_nets(nets[:1], ["D"])
  spec = descriptor.DescriptorSpec(scales=(16, 32), nets=("D",))
  with pytest.raises(ValueError, match="at least 32"):
    extract.extract_split(sources.read_images("set", image_set, "all"),
                          "all", tmp_path, loaded, spec, show_progress=False)


def _digits_set(root, per_class=24):
  """A Caltech-style folder set of scikit-learn's digits (caltech101 layout)."""
  from sklearn.datasets import load_digits
  d = load_digits()
  base = root / "101_ObjectCategories"
  counts = {}
  for img, y in zip(d.images, d.target):
    if counts.get(y, 0) >= per_class:
      continue
    counts[y] = counts.get(y, 0) + 1
    grey = np.clip(img * 16, 0, 255).astype(np.uint8)
    out = base / f"digit{y}" / f"image_{counts[y]:04d}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grey).resize((32, 32), Image.BILINEAR).save(out)
  (base / "digit3" / "image_9999.jpg").write_bytes(b"\xff\xd8 truncated")
  return root


def test_cli_extract_then_svm_caltech(tmp_path, nets):
  from sklearn.metrics import balanced_accuracy_score
  root = _digits_set(tmp_path / "digits")
  out = cli.main(["extract", "--model", nets[0], "--names", "D", "--kind",
                  "caltech101", "--root", str(root), "--splits", "all",
                  "--scales", "32,48", "--aggregation", "stack",
                  "--output", str(tmp_path / "f"), "--chunk_size", "64",
                  "--batch_size", "16"])
  assert out["spec"]["scales"] == [32, 48]
  feats = store.load_split(tmp_path / "f", "all")
  assert len(feats.names) == 240
  assert [f["name"] for f in feats.failed] == ["digit3/image_9999.jpg"]
  assert feats.classes == [f"digit{d}" for d in range(10)]
  res = cli.main(["svm", "caltech", "--features", str(tmp_path / "f"),
                  "--splits", "all", "--num_train", "12", "--max_test", "12",
                  "--output", str(tmp_path / "r")])
  per_split = []
  for s in range(3):
    p = np.load(tmp_path / "r" / f"predictions_split{s}.npz")
    per_split.append(balanced_accuracy_score(p["label"], p["predicted"]))
  m = res["mean_class_recall"]
  assert m["mean"] == pytest.approx(np.mean(per_split), abs=1e-9)
  assert m["std"] == pytest.approx(np.std(per_split), abs=1e-9)
  assert m["mean"] > 0.3  # random conv features of digits: far above 10%


def test_features_alias_is_the_same_command():
  from vgg_jax import features
  assert features.main is cli.main


def test_presets_carry_the_papers_numbers():
  from vgg_jax.transfer import presets
  p = presets.get_preset("voc2007_de")
  assert p.spec.scales == (256, 384, 512, 640, 768)
  assert p.spec.aggregation == "average" and p.spec.nets == ("D", "E")
  assert "89.7" in p.doc and p.paper == "89.7 mAP"
  c = presets.get_preset("caltech256_de")
  assert c.spec.scales == (256, 384, 512) and c.spec.aggregation == "stack"
  assert "86.2 ± 0.3" in c.doc
  assert presets.get_preset("voc_action_box").spec.box
  assert "84.0" in presets.get_preset("voc_action_box").doc
  assert len(presets.PRESETS) == 14  # 12 of Table 11, 2 of Table 12
