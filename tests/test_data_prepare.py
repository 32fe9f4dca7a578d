"""`python -m vgg_jax.data prepare/stats`: the real TFDS imagenet2012 builder
on tiny ILSVRC-format tars made from real photos, folders, and statistics."""

import io
import json
import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import data_fixtures as F  # noqa: E402

from vgg_jax import conventions  # noqa: E402
from vgg_jax import input_pipeline as ip  # noqa: E402
from vgg_jax import preprocess as P  # noqa: E402
from vgg_jax.data import __main__ as cli  # noqa: E402
from vgg_jax.data import stats  # noqa: E402

NUM_VAL = 5
PER_CLASS = 3


def _tfds_file(rel):
  tfds = ip.tfds_module()
  return pathlib.Path(str(tfds.core.tfds_path(rel)))


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
  """Tiny imagenet2012 built by TFDS' own builder through our CLI."""
  tmp = tmp_path_factory.mktemp("imagenet")
  synsets = _tfds_file("datasets/imagenet2012/labels.txt").read_text().split()
  train_names, val_names = F.make_ilsvrc_tars(
      tmp / "manual", synsets[:3], PER_CLASS, NUM_VAL)
  data_dir = tmp / "tfds"
  rc = cli.main(["prepare", "imagenet2012", "--manual_dir", str(tmp / "manual"),
                 "--data_dir", str(data_dir)])
  assert rc == 0
  return dict(data_dir=data_dir, synsets=synsets, train_names=train_names,
              val_names=val_names)


def _cfg(data_dir):
  cfg = ip.default_data_config("tfds")
  cfg.name, cfg.data_dir, cfg.num_threads = "imagenet2012", str(data_dir), 2
  return cfg


def test_imagenet2012_builder_splits_and_labels(imagenet):
  info = ip.dataset_info(_cfg(imagenet["data_dir"]))
  assert info.num_classes == 1000
  assert info.num_train_examples == len(imagenet["train_names"]) == 3 * PER_CLASS + 6
  assert info.num_eval_examples == NUM_VAL
  assert info.class_names[:3] == imagenet["synsets"][:3]
  # Validation labels: TFDS' validation_labels.txt lists one synset per
  # validation file in file-name order; a tiny val tar takes the first lines.
  val_synsets = _tfds_file(
      "datasets/imagenet2012/validation_labels.txt").read_text().split()
  src = ip.TfdsImageSource("imagenet2012", "validation",
                           str(imagenet["data_dir"]))
  got = dict(src.label_and_name(i) [::-1] for i in range(len(src)))
  assert got == {name: imagenet["synsets"].index(val_synsets[i])
                 for i, name in enumerate(imagenet["val_names"])}
  train = ip.TfdsImageSource("imagenet2012", "train", str(imagenet["data_dir"]))
  for i in range(len(train)):
    label, name = train.label_and_name(i)
    assert imagenet["synsets"][label] == imagenet["train_names"][name]


def test_imagenet2012_bad_files_round_trip(imagenet):
  """The builder stores the bytes; our decoder handles every nasty case."""
  train = ip.TfdsImageSource("imagenet2012", "train", str(imagenet["data_dir"]))
  by_name = {train.label_and_name(i)[1]: i for i in range(len(train))}
  nasty = F.nasty_files()
  for tag, (data, kind) in nasty.items():
    i = by_name[f"{imagenet['synsets'][0]}_nasty_{tag}.JPEG"]
    if tag in F.UNDECODABLE:
      with pytest.raises(P.DecodeError, match="nasty"):
        train.get(i)
      continue
    img, _, _ = train.get(i)
    # Compared with the photo the file was made from (not with a decode).
    photo = F.varied_photo(0) if kind != "small" else F.photos_cached()[2][:150, :200]
    if kind == "grey":
      photo = np.repeat(np.asarray(Image.fromarray(photo).convert("L"))[..., None], 3, -1)
    assert img.shape == photo.shape and img.dtype == np.uint8
    assert np.abs(img.astype(int) - photo).mean() < 6.0, kind
  # Training on it: bad files skipped and counted, never a crash.
  cfg = _cfg(imagenet["data_dir"])
  it = ip.create_train_iterator(cfg, global_batch_size=len(train), seed=0,
                                input_convention=conventions.CAFFE,
                                process_index=0, process_count=1)
  batch = next(it)  # one whole (shuffled) epoch
  assert batch["image"].shape == (len(train), 224, 224, 3)
  assert np.isfinite(batch["image"]).all()
  assert it.skipped == 2  # both undecodable files, nothing else
  # Evaluation on it: every example accounted for, failures by name.
  ev = iter(ip.create_eval_iterator(cfg, split="train", global_batch_size=4,
                                    input_convention=conventions.PAPER,
                                    process_index=0, process_count=1))
  masks = [b["mask"] for b in ev]
  assert int(np.sum(masks)) == len(train) - 2
  assert sorted(f["name"] for f in ev.failed) == sorted(
      f"{imagenet['synsets'][0]}_nasty_{t}.JPEG" for t in F.UNDECODABLE)
  # Validation: centre crops of the real photos, all decoded.
  val = list(ip.create_eval_iterator(cfg, global_batch_size=4,
                                     input_convention=conventions.PAPER,
                                     process_index=0, process_count=1))
  assert sum(int(b["mask"].sum()) for b in val) == NUM_VAL


def test_missing_split_and_data_dir_errors(imagenet, tmp_path):
  cfg = _cfg(imagenet["data_dir"])
  cfg.eval_split = "test"
  with pytest.raises(ValueError, match="validation"):
    ip.dataset_info(cfg)
  assert cli.main(["prepare", "imagenet2012", "--data_dir", str(tmp_path)]) == 2
  assert cli.main(["prepare", "imagenet2012", "--data_dir", str(tmp_path),
                   "--manual_dir", str(tmp_path)]) == 2


def test_prepare_folder_cli(tmp_path, capsys):
  F.make_image_folder(tmp_path, ["x", "y"], 2, "train", nasty=True)
  F.make_image_folder(tmp_path, ["x", "y"], 1, "validation")
  assert cli.main(["prepare", "folder", "--data_dir", str(tmp_path),
                   "--check"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["num_classes"] == 2
  assert out["splits"] == {"train": 10, "validation": 2}
  assert len(out["undecodable"]) == 2
  assert json.loads((tmp_path / "class_index.json").read_text()) == {"x": 0, "y": 1}


def test_stats_match_numpy_on_raw_pixels(tmp_path, capsys):
  files = F.make_image_folder(tmp_path, ["a", "b"], 2, "train", nasty=True)
  # Independent reference: Pillow decode, numpy mean / population covariance.
  pixels = []
  for rel in files:
    data = (tmp_path / rel).read_bytes()
    try:
      with Image.open(io.BytesIO(data)) as im:
        pixels.append(np.asarray(im.convert("RGB"), np.float64).reshape(-1, 3))
    except OSError:
      continue  # truncated / empty: skipped by both
  x = np.concatenate(pixels)
  mean = x.mean(0)
  cov = np.cov(x.T, bias=True) / 255.0**2
  w, v = np.linalg.eigh(cov)
  out_json = tmp_path / "stats.json"
  assert cli.main(["stats", "--source", "folder", "--data_dir", str(tmp_path),
                   "--output", str(out_json)]) == 0
  got = json.loads(out_json.read_text())
  assert got["num_images"] == len(pixels) and got["num_skipped"] == 2
  assert got["num_pixels"] == x.shape[0]
  # Decoders differ slightly (libjpeg-turbo vs Pillow's libjpeg build).
  np.testing.assert_allclose(got["mean_rgb"], mean, atol=0.2)
  np.testing.assert_allclose(got["pca_eigval"], w[::-1], rtol=0.02)
  gv = np.asarray(got["pca_eigvec"])
  for i in range(3):  # columns, sign arbitrary
    assert abs(abs(gv[:, i] @ v[:, 2 - i]) - 1) < 1e-3
  # Exact against numpy on the very same pixels.
  imgs = [np.random.default_rng(i).integers(0, 256, (5, 7, 3), np.uint8)
          for i in range(3)]
  ref = np.concatenate([i.reshape(-1, 3) for i in imgs]).astype(np.float64)
  s = stats.pixel_stats(imgs)
  np.testing.assert_allclose(s["mean_rgb"], ref.mean(0), rtol=1e-12)
  c = np.cov(ref.T, bias=True) / 255.0**2
  vals = np.asarray(s["pca_eigval"])
  vecs = np.asarray(s["pca_eigvec"])
  np.testing.assert_allclose(c @ vecs, vecs * vals, atol=1e-12)
  assert np.all(np.diff(vals) <= 0)


@pytest.mark.skipif(
    not (pathlib.Path(ip.FASHION_MNIST_DIR) / "t10k-images-idx3-ubyte.gz"
         ).exists(), reason="apt-get install dataset-fashion-mnist")
def test_stats_of_a_grey_source_through_the_source_registry(capsys):
  # Fashion-MNIST goes through the same per-image path as the RGB sources
  # (its registry entry's stored-image reader); one channel gives mean/std.
  assert cli.main(["stats", "--source", "fashion_mnist", "--split",
                   "test"]) == 0
  got = json.loads(capsys.readouterr().out)
  images, _ = ip.fashion_mnist_split(ip.default_data_config("fashion_mnist"),
                                     "test")
  x = images.astype(np.float64).ravel()
  assert got["num_images"] == len(images) and got["num_skipped"] == 0
  assert got["num_pixels"] == x.size
  np.testing.assert_allclose(got["mean"], x.mean(), rtol=1e-12)
  np.testing.assert_allclose(got["std"], x.std(), rtol=1e-9)
