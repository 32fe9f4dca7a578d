"""grain pipelines: determinism, resume, sharding, padding, bad input."""

import gzip
import json
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import data_fixtures as F  # noqa: E402

from vgg_jax import conventions  # noqa: E402
from vgg_jax import input_pipeline as ip  # noqa: E402
from vgg_jax import preprocess as P  # noqa: E402

FMNIST = pathlib.Path(ip.FASHION_MNIST_DIR)
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "t10k-images-idx3-ubyte.gz").exists(),
    reason="apt-get install dataset-fashion-mnist")


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


# ---------------------------------------------------------------- Fashion-MNIST


@needs_fmnist
def test_fashion_mnist_read_independently():
  cfg = ip.default_data_config()
  info = ip.dataset_info(cfg)
  assert (info.num_classes, info.num_train_examples,
          info.num_eval_examples) == (10, 60000, 10000)
  images, labels = ip.fashion_mnist_split(cfg, "test")
  # Independent IDX parse: 16-byte image header, 8-byte label header.
  with gzip.open(FMNIST / "t10k-images-idx3-ubyte.gz") as f:
    raw = np.frombuffer(f.read()[16:], np.uint8).reshape(10000, 28, 28)
  with gzip.open(FMNIST / "t10k-labels-idx1-ubyte.gz") as f:
    raw_labels = np.frombuffer(f.read()[8:], np.uint8)
  np.testing.assert_array_equal(images, raw)
  np.testing.assert_array_equal(labels, raw_labels)
  # Fashion-MNIST is balanced: 6,000 / 1,000 per class.
  assert np.all(np.bincount(labels) == 1000)
  train, _ = ip.fashion_mnist_split(cfg, "train")
  assert abs(train.mean() - ip.FASHION_MNIST_MEAN) < 1e-3
  assert abs(train.std() - ip.FASHION_MNIST_STD) < 1e-3


def test_batch_random_crop_flip_matches_per_image_definition():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (64, 12, 12), dtype=np.uint8)
  out = ip.batch_random_crop_flip(images, 10, 2, True, np.random.default_rng(1))
  assert out.shape == (64, 10, 10)
  padded = np.pad(images, [(0, 0), (2, 2), (2, 2)])
  offsets, flips = set(), 0
  for img, o in zip(padded, out):
    matches = [(t, l, f) for t in range(7) for l in range(7) for f in (0, 1)
               if np.array_equal(o, (img[t:t + 10, l:l + 10][:, ::-1] if f
                                     else img[t:t + 10, l:l + 10]))]
    assert matches, "output is not a (flipped) crop of the padded image"
    offsets.add(matches[0][:2])
    flips += matches[0][2]
  assert len(offsets) > 20 and 15 < flips < 49  # random, not fixed


@needs_fmnist
def test_fashion_mnist_train_deterministic_resumable_and_fast_path():
  cfg = ip.default_data_config()
  conv = ip.input_convention(cfg)
  kw = dict(global_batch_size=64, input_convention=conv, process_index=0,
            process_count=1)
  a = ip.create_train_iterator(cfg, seed=3, **kw)
  first = _take(a, 2)
  state = json.loads(json.dumps(a.get_state()))  # JSON round trip
  rest = _take(a, 3)
  b = ip.create_train_iterator(cfg, seed=3, **kw)
  _assert_batches_equal(_take(b, 5), first + rest)  # same seed, same batches
  c = ip.create_train_iterator(cfg, seed=3, **kw)
  c.set_state(state)
  _assert_batches_equal(_take(c, 3), rest)  # resumed = uninterrupted
  d = ip.create_train_iterator(cfg, seed=4, **kw)
  assert not np.array_equal(next(d)["image"], first[0]["image"])
  x = first[0]
  assert x["image"].shape == (64, 32, 32, 1) and x["image"].dtype == np.float32
  assert x["label"].dtype == np.int32
  # Normalised with the training mean/std: roughly zero mean, unit std.
  assert abs(float(x["image"].mean())) < 0.3
  assert 0.7 < float(x["image"].std()) < 1.3
  cfg.image_channels = 3
  rgb = next(ip.create_train_iterator(
      cfg, seed=3, global_batch_size=64,
      input_convention=conventions.InputConvention(
          "RGB", 1.0, (ip.FASHION_MNIST_MEAN,) * 3, (ip.FASHION_MNIST_STD,) * 3),
      process_index=0, process_count=1))
  np.testing.assert_array_equal(rgb["image"][..., 1], x["image"][..., 0])


def test_train_batches_one_global_order_for_any_process_count():
  n, gbs = 103, 12
  one = ip.train_batches(n, seed=7, local_batch=gbs, process_index=0,
                         process_count=1)
  batches = [one[k] for k in range(26)]  # 312 positions: 3 epochs and more
  order = np.concatenate([b["index"] for b in batches])
  np.testing.assert_array_equal(np.concatenate([b["position"] for b in batches]),
                                np.arange(len(order)))
  epochs = [order[e * n:(e + 1) * n].tolist() for e in range(3)]
  for e in epochs:
    assert sorted(e) == list(range(n))  # each epoch: every example once
  assert epochs[0] != epochs[1] != epochs[2]  # reshuffled every epoch
  # P processes: process p holds rows [p*b, (p+1)*b) of the same global
  # batches, positions included.
  for procs in (2, 3, 4):
    shards = [ip.train_batches(n, seed=7, local_batch=gbs // procs,
                               process_index=p, process_count=procs)
              for p in range(procs)]
    for k, ref in enumerate(batches):
      for key in ("index", "position"):
        np.testing.assert_array_equal(
            np.concatenate([s[k][key] for s in shards]), ref[key])
  plain = ip.train_batches(n, seed=7, local_batch=6, process_index=1,
                           process_count=2, shuffle=False)
  np.testing.assert_array_equal(plain[17]["index"],
                                (17 * 12 + 6 + np.arange(6)) % n)


def _write_idx(path, arr):
  header = bytes([0, 0, 8, arr.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in arr.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + arr.astype(np.uint8).tobytes())


def _global_batches(cfg, convention, procs, steps, gbs=16, seed=3):
  """Each process's first ``steps`` batches: [step][process] -> batch."""
  its = [ip.create_train_iterator(cfg, global_batch_size=gbs, seed=seed,
                                  input_convention=convention,
                                  process_index=p, process_count=procs)
         for p in range(procs)]
  return [[next(it) for it in its] for _ in range(steps)]


def _assert_hosts_draw_differently_and_as_one_host(cfg, convention, steps,
                                                   gbs):
  # Every training example is the same image, so two rows differ only by
  # their draws (scale, crop, flip, colour shift).
  one = [b for (b,) in _global_batches(cfg, convention, 1, steps, gbs)]
  for procs in (2, 4):
    many = _global_batches(cfg, convention, procs, steps, gbs)
    for ref, parts in zip(one, many):
      for key in ref:  # the global batch does not depend on the host count
        np.testing.assert_array_equal(
            np.concatenate([b[key] for b in parts]), ref[key],
            err_msg=f"{procs} processes: {key}")
  local = gbs // 2
  same = [bool(np.array_equal(p0["image"][j], p1["image"][j]))
          for p0, p1 in _global_batches(cfg, convention, 2, steps, gbs)
          for j in range(local)]
  # Row j of host 0 and row j of host 1 get their own draws (they used to
  # share them); a coincidence is rare.
  assert sum(same) <= len(same) // 8, same


def test_hosts_draw_differently_fashion_mnist_layout(tmp_path):
  image = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
  _write_idx(tmp_path / "train-images-idx3-ubyte.gz",
             np.broadcast_to(image, (40, 28, 28)))
  _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(40) % 10)
  cfg = ip.default_data_config()
  cfg.data_dir, cfg.train_pad = str(tmp_path), 4  # 9 x 9 offsets x flip
  _assert_hosts_draw_differently_and_as_one_host(
      cfg, ip.input_convention(cfg), steps=3, gbs=16)


def test_hosts_draw_differently_image_sources(tmp_path):
  photo = F.jpeg_bytes(F.varied_photo(1))
  for cls in ("a", "b"):
    (tmp_path / "train" / cls).mkdir(parents=True)
    for j in range(3):
      (tmp_path / "train" / cls / f"{j}.JPEG").write_bytes(photo)
  cfg = _folder_cfg(tmp_path, train_scale=[224, 320], pca_std=0.1)
  _assert_hosts_draw_differently_and_as_one_host(cfg, conventions.PAPER,
                                                 steps=2, gbs=4)


@needs_fmnist
def test_fashion_mnist_eval_every_example_once_on_any_process_count():
  cfg = ip.default_data_config()
  conv = ip.input_convention(cfg)
  images, labels = ip.fashion_mnist_split(cfg, "test")
  for procs, gbs in [(1, 384), (3, 768)]:  # 10,000 divides by neither
    seen = []
    nb = None
    for p in range(procs):
      ev = ip.create_eval_iterator(cfg, global_batch_size=gbs,
                                   input_convention=conv, process_index=p,
                                   process_count=procs)
      batches = list(ev)
      nb = nb or len(batches)
      assert len(batches) == nb == len(ev) == -(-10000 // gbs)
      for b in batches:
        real = b["mask"] == 1
        assert b["image"].shape == (gbs // procs, 32, 32, 1)
        assert np.all(b["index"][~real] == -1)
        np.testing.assert_array_equal(b["label"][real], labels[b["index"][real]])
        seen.extend(b["index"][real].tolist())
    assert sorted(seen) == list(range(10000))
  # Centre protocol at Q = crop is the rescaled image itself, normalised.
  b = next(iter(ip.create_eval_iterator(
      cfg, global_batch_size=4, input_convention=conv, process_index=0,
      process_count=1)))
  ref = P.rescale_shorter_side(images[0][..., None], 32)
  np.testing.assert_allclose(b["image"][0], conv.normalise(ref), atol=1e-5)


def test_fashion_mnist_missing_gives_install_hint(tmp_path):
  cfg = ip.default_data_config()
  cfg.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
    ip.dataset_info(cfg)


# ---------------------------------------------------------------- folders


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("folder")
  F.make_image_folder(root, ["cat", "dog"], 3, "train", nasty=True)
  val = F.make_image_folder(root, ["cat", "dog"], 4, "validation", nasty=True,
                            seed=50)
  return root, val


def _folder_cfg(root, **over):
  cfg = ip.default_data_config("folder")
  cfg.data_dir = str(root)
  cfg.num_threads = 2
  for k, v in over.items():
    setattr(cfg, k, v)
  return cfg


def test_folder_train_skips_and_counts_bad_files(folder):
  root, _ = folder
  cfg = _folder_cfg(root, shuffle=False, train_scale=224, pca_std=0.0,
                    flip=False)
  it = ip.create_train_iterator(cfg, global_batch_size=5, seed=0,
                                input_convention=conventions.PAPER,
                                process_index=0, process_count=1)
  # 12 files sorted: cat_0..2, cat_nasty_{cmyk,empty,grey,png,small,
  # truncated}, dog_0..2.  Batch 0 = files 0-4 (empty at slot 4), batch 1 =
  # files 5-9 (truncated at slot 3).
  batches = _take(it, 2)
  assert it.skipped == 2
  np.testing.assert_array_equal(batches[0]["label"], [0, 0, 0, 0, 0])
  np.testing.assert_array_equal(batches[1]["label"], [0, 0, 0, 0, 1])
  assert all(np.isfinite(b["image"]).all() for b in batches)
  assert it.get_state()["skipped"] == 2
  # A decodable example is a 224 window of the S=224 rescaled photo, minus
  # the mean (PAPER convention): exactly, up to the crop-aware decoder's
  # interpolation rounding (<= 2 grey levels, tests/test_preprocess_crop.py).
  src = ip.FolderImageSource(root, "train")
  img, _, name = src.get(0, min_side=224)
  assert name == "train/cat/cat_0.JPEG"
  ref = P.rescale_shorter_side(img, 224).astype(np.float32)
  out = batches[0]["image"][0] + np.asarray(conventions.PAPER.mean, np.float32)
  windows = [ref[t:t + 224, l:l + 224] for t in range(ref.shape[0] - 223)
             for l in range(ref.shape[1] - 223)]
  assert min(np.abs(w - out).max() for w in windows) <= 2 + 1e-3


def test_folder_train_pca_shift_and_convention(folder):
  root, _ = folder
  base = dict(train_scale=224, flip=False)
  kw = dict(global_batch_size=4, seed=11, process_index=0, process_count=1)
  plain = next(ip.create_train_iterator(
      _folder_cfg(root, pca_std=0.0, **base), input_convention=conventions.PAPER,
      **kw))
  shifted = next(ip.create_train_iterator(
      _folder_cfg(root, pca_std=0.1, **base), input_convention=conventions.PAPER,
      **kw))
  caffe = next(ip.create_train_iterator(
      _folder_cfg(root, pca_std=0.1, **base), input_convention=conventions.CAFFE,
      **kw))
  np.testing.assert_array_equal(plain["label"], shifted["label"])
  delta = shifted["image"] - plain["image"]
  # The crop positions are drawn before alpha; so same crops, and the PCA
  # shift is one RGB offset per image, different between images.
  per_image = delta.reshape(4, -1, 3)
  np.testing.assert_allclose(
      per_image, np.broadcast_to(per_image[:, :1], per_image.shape), atol=1e-3)
  assert np.all(np.abs(per_image[:, 0]).max(1) > 0.01)
  assert np.abs(per_image[0, 0] - per_image[1, 0]).max() > 0.01
  # CAFFE = BGR minus its mean pixel; undoing both gives the same RGB pixels.
  rgb_caffe = caffe["image"][..., ::-1] + np.asarray(conventions.CAFFE.mean[::-1])
  rgb_paper = shifted["image"] + np.asarray(conventions.PAPER.mean)
  np.testing.assert_allclose(rgb_caffe, rgb_paper, atol=1e-3)


def test_folder_train_resume_and_scale_jitter(folder):
  root, _ = folder
  cfg = _folder_cfg(root, train_scale=[224, 320])
  kw = dict(global_batch_size=4, seed=5, input_convention=conventions.PAPER,
            process_index=1, process_count=2)
  a = ip.create_train_iterator(cfg, **kw)
  _take(a, 2)
  state = json.loads(json.dumps(a.get_state()))
  rest = _take(a, 3)
  b = ip.create_train_iterator(cfg, **kw)
  b.set_state(state)
  _assert_batches_equal(_take(b, 3), rest)
  assert b.skipped == a.skipped
  assert rest[0]["image"].shape == (2, 224, 224, 3)
  # Neither reader threads nor worker processes change the batches.
  cfg.num_threads, cfg.num_workers = 0, 2
  c = ip.create_train_iterator(cfg, **kw)
  try:
    _assert_batches_equal(_take(c, 5)[2:], rest)
  finally:
    c.close()


def test_folder_eval_counts_failures_by_name_on_three_processes(folder):
  root, val = folder
  cfg = _folder_cfg(root)
  n = len(val)  # 8 good + 6 nasty = 14
  bad = sorted(k for k in val if any(t in k for t in F.UNDECODABLE))
  seen, failed, nbatches = [], [], set()
  for p in range(3):
    ev = ip.create_eval_iterator(cfg, global_batch_size=6,
                                 input_convention=conventions.PAPER,
                                 process_index=p, process_count=3)
    it = iter(ev)
    batches = list(it)
    nbatches.add(len(batches))
    for b in batches:
      assert b["image"].shape == (2, 224, 224, 3)
      assert set(b) == {"image", "label", "mask", "index", "decode_error"}
      real = b["index"] >= 0
      seen.extend(b["index"][real].tolist())
      assert np.all(b["mask"][b["decode_error"] == 1] == 0)
      assert np.all(b["image"][b["decode_error"] == 1] ==
                    -np.asarray(conventions.PAPER.mean, np.float32))
    failed.extend(f["name"] for f in it.failed)
  assert nbatches == {3}  # ceil(14 / 6)
  assert sorted(seen) == list(range(n))  # every example exactly once
  assert sorted(failed) == bad


def test_folder_eval_protocols(folder):
  root, val = folder
  cfg = _folder_cfg(root, eval_scale=256)
  src = ip.FolderImageSource(root, "validation")
  img, label, _ = src.get(0, min_side=256)
  q = P.rescale_shorter_side(img, 256)
  kw = dict(global_batch_size=2, input_convention=conventions.PAPER,
            process_index=0, process_count=1)
  centre = next(iter(ip.create_eval_iterator(cfg, **kw)))
  # Centre crops come from the crop-aware decoder: equal up to its
  # interpolation rounding (<= 2 grey levels).
  np.testing.assert_allclose(centre["image"][0],
                             conventions.PAPER.normalise(P.center_crop(q, 224)),
                             atol=2.001, rtol=0)
  multi = next(iter(ip.create_eval_iterator(cfg, protocol="multicrop", **kw)))
  assert multi["image"].shape == (2, 50, 224, 224, 3)
  grid = P.grid_crops(q, 224, 5)
  np.testing.assert_allclose(multi["image"][0, :25],
                             conventions.PAPER.normalise(grid))
  np.testing.assert_allclose(multi["image"][0, 25:],
                             conventions.PAPER.normalise(grid[:, :, ::-1]))
  dense = list(ip.create_eval_iterator(cfg, protocol="dense", batch=False,
                                       global_batch_size=4,
                                       input_convention=conventions.PAPER,
                                       process_index=1, process_count=2))
  assert len(dense) == 8  # ceil(14 / 4) batches of 2 local examples
  real = [d for d in dense if d["mask"]]
  assert all(min(d["image"].shape[:2]) == 256 and d["image"].dtype == np.uint8
             for d in real)
  failed = [d for d in dense if d["decode_error"]]
  assert all(d["mask"] == 0 and d["name"] for d in failed)


def test_folder_class_index_is_written_once(tmp_path):
  F.make_image_folder(tmp_path, ["b_cls", "c_cls"], 1, "train")
  cfg = _folder_cfg(tmp_path, eval_split="train")
  info = ip.dataset_info(cfg)
  assert info.class_names == ["b_cls", "c_cls"] and info.num_classes == 2
  index = json.loads((tmp_path / "class_index.json").read_text())
  assert index == {"b_cls": 0, "c_cls": 1}
  # A new class sorting first must not relabel the old ones.
  F.make_image_folder(tmp_path, ["a_cls"], 1, "train")
  with pytest.raises(ValueError, match="not in the class index"):
    ip.dataset_info(cfg)


def test_clear_errors(tmp_path, folder):
  root, _ = folder
  with pytest.raises(FileNotFoundError, match="split folder"):
    ip.dataset_info(_folder_cfg(root, eval_split="nope"))
  with pytest.raises(FileNotFoundError, match="DATA_DIR/<split>/<class>"):
    ip.dataset_info(_folder_cfg(tmp_path / "missing"))
  cfg = ip.default_data_config("tfds")
  cfg.name, cfg.data_dir = "imagenet2012", str(tmp_path)
  with pytest.raises(FileNotFoundError, match="python -m vgg_jax.data prepare"):
    ip.dataset_info(cfg)
  with pytest.raises(ValueError, match="multiple of the number of processes"):
    ip.create_train_iterator(_folder_cfg(root), global_batch_size=5, seed=0,
                             input_convention=conventions.PAPER,
                             process_index=0, process_count=2)
  with pytest.raises(ValueError, match="smaller than crop_size"):
    ip.create_train_iterator(_folder_cfg(root, train_scale=200),
                             global_batch_size=2, seed=0,
                             input_convention=conventions.PAPER,
                             process_index=0, process_count=1)


@needs_fmnist
def test_worker_processes_give_the_same_batches():
  cfg = ip.default_data_config()
  kw = dict(global_batch_size=32, seed=1,
            input_convention=ip.input_convention(cfg), process_index=0,
            process_count=1)
  ref = _take(ip.create_train_iterator(cfg, **kw), 3)
  cfg.num_workers = 1
  it = ip.create_train_iterator(cfg, **kw)
  try:
    _assert_batches_equal(_take(it, 3), ref)
  finally:
    it.close()
