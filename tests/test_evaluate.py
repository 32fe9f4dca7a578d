"""Evaluation (paper §3.2): counting, protocols, dense batching, the command."""

import numpy as np
import pytest
from flax import nnx

from vgg_jax import conventions, evaluate
from vgg_jax.models import create_model
from vgg_jax.models.vgg import valid_positions

TINY = dict(width_mult=0.125, fc_width=64, num_classes=10, init="he")


@pytest.fixture(scope="module")
def tiny_model():
  """32x32 inputs, 1x1 score map: counting tests need no big images."""
  return create_model("A", rngs=nnx.Rngs(0), head_window=1, **TINY)


def _numpy_errors(logits, labels):
  """Top-1/top-5 error written with argsort (independent of lax.top_k)."""
  order = np.argsort(-logits, axis=1, kind="stable")
  top1 = order[:, 0] == labels
  top5 = (order[:, :5] == labels[:, None]).any(axis=1)
  return 1 - top1.mean(), 1 - top5.mean()


def test_evaluate_classifier_counts_every_real_example_once(tiny_model):
  rng = np.random.default_rng(0)
  images = rng.normal(0, 1, (11, 32, 32, 3)).astype(np.float32)
  logits = np.asarray(tiny_model(images))
  # Labels chosen so that top-1 and top-5 errors are neither 0 nor 1.
  order = np.argsort(-logits, axis=1)
  labels = np.array([order[i, [0, 3, 7][i % 3]] for i in range(11)])
  want_top1, want_top5 = _numpy_errors(logits, labels)
  assert 0 < want_top1 < 1 and 0 < want_top5 < 1
  # Batches of 4 with a padded last batch (mask 0 rows get label 0 and
  # garbage images: they must not count).
  batches = []
  for start in range(0, 11, 4):
    n = min(4, 11 - start)
    img = np.full((4, 32, 32, 3), 99.0, np.float32)
    img[:n] = images[start:start + n]
    lab = np.zeros((4,), np.int32)
    lab[:n] = labels[start:start + n]
    mask = (np.arange(4) < n).astype(np.int32)
    batches.append({"image": img, "label": lab, "mask": mask})
  got = evaluate.evaluate_classifier(tiny_model, batches)
  assert got["num_examples"] == 11
  assert got["top1_error"] == pytest.approx(want_top1)
  assert got["top5_error"] == pytest.approx(want_top5)
  # A mesh over the available devices gives the same answer, also one with
  # jax.make_mesh's default Explicit axes (the training loop's).
  import jax
  got_mesh = evaluate.evaluate_classifier(tiny_model, batches,
                                          mesh=evaluate.default_mesh())
  assert got_mesh == got
  explicit = jax.make_mesh((jax.device_count(),), ("data",))
  assert evaluate.evaluate_classifier(tiny_model, batches,
                                      mesh=explicit) == got


def test_evaluate_classifier_rejects_empty_input(tiny_model):
  with pytest.raises(ValueError, match="no batches"):
    evaluate.evaluate_classifier(tiny_model, [])
  empty = {"image": np.zeros((2, 32, 32, 3), np.float32),
           "label": np.zeros((2,), np.int32), "mask": np.zeros((2,), np.int32)}
  with pytest.raises(ValueError, match="no examples"):
    evaluate.evaluate_classifier(tiny_model, [empty])


def _softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def _alone_dense(model, convention, img):
  """Dense posterior of one image at its exact size, no canvas, no masks:
  the model's own score map averaged, soft-max, averaged with the flip."""
  x = convention.normalise(img)[None]
  p = _softmax(np.asarray(model(x)))[0]
  pf = _softmax(np.asarray(model(x[:, :, ::-1])))[0]
  return (p + pf) / 2


def _random_images(sizes, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def _stream(images, labels=None):
  for i, img in enumerate(images):
    yield {"image": img, "label": 0 if labels is None else labels[i],
           "index": i, "name": f"img{i}", "mask": 1, "decode_error": ""}


# LRN; BatchNorm.  (AlexNet's strided, padded conv1 and 3x3/2 pools pass
# too, but cost 40 s of the test budget: add "alexnet" to check them.)
@pytest.mark.parametrize("name", ["A-LRN", "D-BN"])
def test_bucketed_dense_equals_each_image_alone(name):
  # Every aspect ratio: landscape, portrait, square, odd sizes; several share
  # a bucket, so images of different sizes run on one zero-padded canvas.
  model = create_model(name, rngs=nnx.Rngs(1), **TINY)
  if name == "D-BN":  # non-trivial running statistics
    for layer in ("block1_bn1", "block3_bn2"):
      bn = getattr(model, layer)
      bn.mean[...] = bn.mean[...] + 0.3
      bn.var[...] = bn.var[...] * 2.0
  # Buckets of 64: (320, 256) for a portrait image, and (256, 256) shared
  # by two images of different sizes (padded below and to the right).
  sizes = [(291, 224), (229, 256), (227, 254)]
  images = _random_images(sizes)
  # BGR and a scale: the device-side normalisation is exercised too.
  convention = conventions.InputConvention("BGR", 1 / 255, (0.4, 0.45, 0.5),
                                           (0.22, 0.23, 0.24))
  post, names, labels, failed = evaluate.scale_posteriors(
      model, _stream(images), num_examples=len(images),
      convention=convention, parts=("dense",), batch_size=2, bucket_step=64)
  assert not failed and list(names) == [f"img{i}" for i in range(3)]
  want = np.stack([_alone_dense(model, convention, img) for img in images])
  np.testing.assert_allclose(post["dense"], want, atol=1e-5, rtol=0)
  # The posteriors are not all alike (the test could fail).
  assert np.abs(want[0] - want[1]).max() > 1e-4


def test_without_remasking_the_canvas_would_change_the_result():
  # The reason for the model's masked application (valid_hw): zero padding alone is not enough, the
  # padded border of a layer's output is not zero after bias and ReLU.
  import jax.numpy as jnp
  model = create_model("A", rngs=nnx.Rngs(2), head_window=1, **TINY)
  img = _random_images([(40, 72)])[0]  # a 1x2 score map
  x = conventions.TORCHVISION.normalise(img)[None]
  canvas = np.zeros((1, 96, 128, 3), np.float32)
  canvas[0, :40, :72] = x[0]
  alone = np.asarray(model(x))
  naive = np.asarray(model.score_map(canvas))[:, :1, :2].mean(axis=(1, 2))
  scores, hw = model.score_map(
      jnp.asarray(canvas), valid_hw=jnp.asarray([[40, 72]], jnp.int32))
  valid = valid_positions(scores.shape[1:3], hw[:, 0], hw[:, 1])
  masked = (np.asarray(scores) * np.asarray(valid)[..., None]).sum(
      axis=(1, 2)) / np.asarray(valid).sum()
  # Logits of magnitude ~4: float32 sums in another order differ by ~1e-6
  # relative; the naive canvas is off by orders of magnitude more.
  np.testing.assert_allclose(masked, alone, rtol=1e-5, atol=1e-5)
  assert np.abs(naive - alone).max() > 1e-3


# --- The command, end to end on Fashion-MNIST (28x28 grey, rescaled to Q). ---

FASHION_TINY = dict(width_mult=0.125, fc_width=32, num_classes=10,
                    head_window=1, in_channels=1)


def _save_tiny(path, seed, name="A", convention=None, **extra):
  from vgg_jax import input_pipeline, weights
  model = create_model(name, rngs=nnx.Rngs(seed), init="he", **FASHION_TINY)
  cfg = input_pipeline.default_data_config("fashion_mnist")
  convention = convention or input_pipeline.input_convention(cfg)
  weights.save_pretrained(
      path, model, model_kwargs=dict(name=name, **FASHION_TINY),
      input_convention=convention, source="test",
      class_names=list(input_pipeline.FASHION_MNIST_CLASSES),
      extra=dict({"train_scale": 32, "crop_size": 32}, **extra))
  return model, convention


def _reference_posteriors(model, convention, images):
  """dense and multicrop posteriors of equal-size images, written out
  directly: the model on whole images and their flips; 50 explicit crops."""
  from vgg_jax import preprocess
  x = convention.normalise(np.stack(images))
  dense = (_softmax(np.asarray(model(x)))
           + _softmax(np.asarray(model(x[:, :, ::-1])))) / 2
  crops = np.stack([convention.normalise(preprocess.grid_crops(img, 32, 5))
                    for img in images])  # (n, 25, 32, 32, C)
  crops = np.concatenate([crops, crops[:, :, :, ::-1]], axis=1)
  multi = _softmax(np.asarray(model(crops.reshape((-1,) + crops.shape[2:]))))
  return dense, multi.reshape(len(images), 50, -1).mean(axis=1)


def test_command_dense_multicrop_ensemble_and_saved_posteriors(
    tmp_path, monkeypatch):
  from vgg_jax import input_pipeline
  from vgg_jax.eval import dense
  ran = []  # (images, crops per image) of each multi-crop device batch
  real_crops = dense.DenseEngine.crops
  monkeypatch.setattr(dense.DenseEngine, "crops", lambda self, c, *a, **k: (
      ran.append(c.shape[:2]), real_crops(self, c, *a, **k))[1])
  m1, conv1 = _save_tiny(tmp_path / "m1", 1)
  # The second model has another input convention: each model gets its own.
  conv2 = conventions.InputConvention("RGB", 1 / 255, (0.3,), (0.35,))
  m2, _ = _save_tiny(tmp_path / "m2", 2, convention=conv2)
  out = tmp_path / "out"
  report = evaluate.main([
      "--model", str(tmp_path / "m1"), "--model", str(tmp_path / "m2"),
      "--data", "fashion_mnist", "--protocol", "dense+multicrop",
      "--scales", "32,40", "--limit", "8", "--batch-size", "4",
      "--output", str(out), "--save-posteriors", "--arch", "A"])
  # Independent reference: the same decoded images, one at a time.
  cfg = input_pipeline.default_data_config("fashion_mnist")
  per_model = []
  for model, conv in ((m1, conv1), (m2, conv2)):
    per_scale = []
    for q in (32, 40):
      it = input_pipeline.create_eval_iterator(
          cfg, global_batch_size=1, input_convention=conv, protocol="dense",
          scale=q, batch=False)
      exs = [ex for _, ex in zip(range(8), it)]
      labels = np.array([ex["label"] for ex in exs])
      imgs = [np.asarray(ex["image"]).reshape(q, q, 1) for ex in exs]
      d, mc = _reference_posteriors(model, conv, imgs)
      per_scale.append((d, mc))
    dense = np.mean([d for d, _ in per_scale], axis=0)
    multi = np.mean([m for _, m in per_scale], axis=0)
    per_model.append((dense + multi) / 2)
  # At Q = 32 an image is the crop's size: its 25 grid crops are one crop,
  # run once (the reference above still averages all 50 explicit crops).
  # At Q = 40 they differ: 25 per image.  2 models x 8 images, batches of 4.
  assert sorted(ran) == [(4, 1)] * 4 + [(4, 25)] * 4
  # Saved posteriors match the reference part by part.
  saved = evaluate.SplitPosteriors.load(out / "posteriors_1_A.npz")
  np.testing.assert_array_equal(saved.labels, labels)
  assert list(saved.names[:2]) == ["fashion_mnist/test/0",
                                   "fashion_mnist/test/1"]
  np.testing.assert_allclose(
      combine_one := evaluate.combine([saved], "dense+multicrop"),
      per_model[1], atol=1e-5)
  assert combine_one.shape == (8, 10)
  rows = report["rows"]
  assert [r["net"] for r in rows] == ["A", "A", "A & A (ensemble)"]
  for row, post in zip(rows, per_model + [np.mean(per_model, axis=0)]):
    want1, want5 = _numpy_errors(post, labels)
    assert row["top1_error"] == pytest.approx(want1)
    assert row["top5_error"] == pytest.approx(want5)
    assert row["num_examples"] == 8
  assert report["num_evaluated"] == 8 and report["num_failed"] == 0
  md = (out / "results.md").read_text()
  assert "| A & A (ensemble) | ? | 32,40 | multi-crop & dense |" in md
  assert "8 evaluated, 0 could not be decoded" in md
  # Ensembles and protocols formed later from the saved posteriors.
  again = evaluate.main([
      "--from-posteriors", str(out / "posteriors_0_A.npz"),
      str(out / "posteriors_1_A.npz"), "--protocol", "dense",
      "--output", str(tmp_path / "out2")])
  dense_ens = np.mean([
      evaluate.SplitPosteriors.load(out / f"posteriors_{i}_A.npz")
      .posteriors[f"dense@{q}"] for i in (0, 1) for q in (32, 40)], axis=0)
  want1, want5 = _numpy_errors(dense_ens, labels)
  assert again["rows"][-1]["top1_error"] == pytest.approx(want1)
  assert again["rows"][-1]["top5_error"] == pytest.approx(want5)


# --- Bad input: a clear error before any compute. ---

def _no_compute(monkeypatch):
  """Any evaluation attempt fails the test: errors must come first."""
  def boom(*a, **k):
    raise AssertionError("evaluation started before the input was checked")
  monkeypatch.setattr(evaluate, "evaluate_model", boom)


def test_bad_input_is_refused_before_compute(tmp_path, monkeypatch):
  import json
  _no_compute(monkeypatch)
  _save_tiny(tmp_path / "a", 0)
  base = ["--data", "fashion_mnist", "--output", str(tmp_path / "o")]
  # A different net than asked.
  with pytest.raises(ValueError, match="holds net 'A', but 'D' was asked"):
    evaluate.main(["--model", str(tmp_path / "a"), "--arch", "vgg16",
                   "--scales", "32"] + base)
  # Scales under the training crop.
  with pytest.raises(ValueError, match=r"\[24\] are smaller than .* 32x32"):
    evaluate.main(["--model", str(tmp_path / "a"), "--scales", "24,32"]
                  + base)
  # Classes that do not match the dataset's: count, then names.
  from vgg_jax import input_pipeline, weights
  kw = dict(FASHION_TINY, num_classes=7)
  weights.save_pretrained(
      tmp_path / "c7", create_model("A", rngs=nnx.Rngs(0), **kw),
      model_kwargs=dict(name="A", **kw), input_convention=conventions.PAPER,
      source="t", extra={"crop_size": 32})
  with pytest.raises(ValueError, match="predicts 7 classes but .* has 10"):
    evaluate.main(["--model", str(tmp_path / "c7"), "--scales", "32"] + base)
  names = list(input_pipeline.FASHION_MNIST_CLASSES)[::-1]
  weights.save_pretrained(
      tmp_path / "rev", create_model("A", rngs=nnx.Rngs(0), **FASHION_TINY),
      model_kwargs=dict(name="A", **FASHION_TINY),
      input_convention=conventions.PAPER, source="t", class_names=names,
      extra={"crop_size": 32})
  with pytest.raises(ValueError, match="class names differ"):
    evaluate.main(["--model", str(tmp_path / "rev"), "--scales", "32"] + base)
  # Weights without an input convention.
  meta = json.loads((tmp_path / "a" / "metadata.json").read_text())
  del meta["input_convention"]
  (tmp_path / "a" / "metadata.json").write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="input_convention"):
    evaluate.main(["--model", str(tmp_path / "a"), "--scales", "32"] + base)
  # Not a model directory at all.
  with pytest.raises(FileNotFoundError, match="neither imported weights"):
    evaluate.main(["--model", str(tmp_path), "--scales", "32"] + base)
  # No recorded S and no --scales.
  _save_tiny(tmp_path / "nos", 0, train_scale=None)
  with pytest.raises(ValueError, match="pass --scales"):
    evaluate.main(["--model", str(tmp_path / "nos")] + base)


def test_paper_scales_and_crop_check():
  assert evaluate.paper_scales(256) == [224, 256, 288]
  assert evaluate.paper_scales(384) == [352, 384, 416]
  assert evaluate.paper_scales([256, 512]) == [256, 384, 512]
  assert evaluate.paper_scales([256, 512], single=True) == [384]
  assert evaluate.paper_scales(256, single=True) == [256]
  with pytest.raises(ValueError, match="smaller than"):
    evaluate.check_scales([256, 200], 224)


def test_undecodable_images_count_as_errors_by_name():
  # Two of five images could not be decoded: they are listed, counted in the
  # denominator, and never right, even if their label would have matched.
  model = create_model("A", rngs=nnx.Rngs(1), head_window=1, **TINY)
  images = _random_images([(32, 40)] * 5, seed=3)
  exs = list(_stream(images))
  for i in (1, 3):
    exs[i] = dict(exs[i], image=np.zeros((1, 1, 3), np.uint8),
                  decode_error="truncated JPEG", mask=0)
  post, names, labels, failed = evaluate.scale_posteriors(
      model, iter(exs), num_examples=5, convention=conventions.TORCHVISION,
      parts=("centre",), crop_size=32, batch_size=4)
  assert failed == {"img1": "truncated JPEG", "img3": "truncated JPEG"}
  assert np.isnan(post["centre"][[1, 3]]).all()
  assert not np.isnan(post["centre"][[0, 2, 4]]).any()
  err = evaluate.errors_of(post["centre"], labels)
  assert err["num_examples"] == 5 and err["num_failed"] == 2
  ok = post["centre"][[0, 2, 4]]
  hits = (np.argmax(ok, axis=1) == 0).sum()
  assert err["top1_error"] == pytest.approx(1 - hits / 5)
  hits5 = sum(0 in np.argsort(-row)[:5] for row in ok)
  assert err["top5_error"] == pytest.approx(1 - hits5 / 5)
  # An example the stream never delivered is an error, not a smaller split.
  with pytest.raises(RuntimeError, match=r"exactly once: missing positions \[2\]"):
    evaluate.scale_posteriors(
        model, iter([e for e in exs if e["index"] != 2]), num_examples=5,
        convention=conventions.TORCHVISION, parts=("centre",), crop_size=32,
        batch_size=4)


# --- Every example once on several devices and several processes. ---

_WORKER = r'''
import json, os, sys
import numpy as np
import jax
pid, nproc, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
if nproc > 1:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"127.0.0.1:{port}", nproc, pid)
from flax import nnx
from vgg_jax import conventions, evaluate
from vgg_jax.models import create_model
from vgg_jax.models.vgg import valid_positions
model = create_model("A", rngs=nnx.Rngs(1), width_mult=0.125, fc_width=64,
                     num_classes=10, init="he", head_window=1)
rng = np.random.default_rng(0)
sizes = [(32, 72), (72, 32)] * 3 + [(40, 64)]
images = [rng.integers(0, 256, s + (3,), dtype=np.uint8) for s in sizes]
labels = [int(v) for v in rng.integers(0, 10, len(images))]
n = len(images)

def stream():  # what create_eval_iterator(batch=False) yields to process pid
  for j in range(-(-n // nproc)):
    g = j * nproc + pid
    if g >= n:
      yield {"image": np.zeros((1, 1, 3), np.uint8), "label": -1, "index": -1,
             "name": "", "mask": 0, "decode_error": ""}
    elif g == 4:
      yield {"image": np.zeros((1, 1, 3), np.uint8), "label": labels[g],
             "index": g, "name": f"img{g}", "mask": 0,
             "decode_error": "truncated"}
    else:
      yield {"image": images[g], "label": labels[g], "index": g,
             "name": f"img{g}", "mask": 1, "decode_error": ""}

post, names, labs, failed = evaluate.scale_posteriors(
    model, stream(), num_examples=n, convention=conventions.TORCHVISION,
    parts=("dense", "centre"), crop_size=32, batch_size=3, bucket_step=32)
# evaluate_classifier: global batches of 4 over the processes, padded.
crops = np.stack([conventions.TORCHVISION.normalise(im[:32, :32])
                  for im in images])
local = 4 // nproc
batches = []
for k in range(2):
  sl = slice(k * 4 + pid * local, k * 4 + (pid + 1) * local)
  img = np.zeros((local, 32, 32, 3), np.float32)
  lab = np.zeros((local,), np.int32)
  got = crops[sl]
  img[:len(got)] = got
  lab[:len(got)] = labels[sl]
  mask = (np.arange(local) < len(got)).astype(np.int32)
  batches.append({"image": img, "label": lab, "mask": mask})
res = evaluate.evaluate_classifier(model, batches, mesh=evaluate.default_mesh())
if pid == 0:
  np.savez(out, dense=post["dense"], centre=post["centre"], names=names,
           labels=labs, failed=json.dumps(failed), res=json.dumps(res),
           devices=jax.device_count())
'''


@pytest.mark.multiprocess
def test_every_example_once_on_several_devices_and_processes(tmp_path):
  import json
  import os
  import socket
  import subprocess
  import sys
  script = tmp_path / "worker.py"
  script.write_text(_WORKER)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def run(nproc, devices):
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    out = tmp_path / f"out_{nproc}_{devices}.npz"
    procs = [subprocess.Popen([sys.executable, str(script), str(p), str(nproc),
                               str(port), str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for p in range(nproc)]
    for p in procs:
      text = p.communicate(timeout=240)[0].decode()
      assert p.returncode == 0, text[-3000:]
    return np.load(out)

  many = run(2, 2)  # 2 processes x 2 devices: one global mesh of 4
  assert int(many["devices"]) == 4
  assert list(many["names"]) == [f"img{i}" for i in range(7)]
  # Reference: one process, one device, image by image (same weights).
  model = create_model("A", rngs=nnx.Rngs(1), head_window=1, **TINY)
  rng = np.random.default_rng(0)
  sizes = [(32, 72), (72, 32)] * 3 + [(40, 64)]
  images = [rng.integers(0, 256, s + (3,), dtype=np.uint8) for s in sizes]
  labels = rng.integers(0, 10, len(images))
  np.testing.assert_array_equal(many["labels"], labels)
  tv = conventions.TORCHVISION
  dense = np.stack([_alone_dense(model, tv, im) for im in images])
  crops = np.stack([tv.normalise(im[:32, :32]) for im in images])
  logits = np.asarray(model(crops))
  centre_crops = np.stack([tv.normalise(im[(im.shape[0] - 32) // 2:][:32, (
      im.shape[1] - 32) // 2:][:, :32]) for im in images])
  centre = _softmax(np.asarray(model(centre_crops)))
  ok = np.arange(7) != 4  # image 4 could not be decoded
  np.testing.assert_allclose(many["dense"][ok], dense[ok], atol=1e-5)
  np.testing.assert_allclose(many["centre"][ok], centre[ok], atol=1e-5)
  assert np.isnan(many["dense"][4]).all() and np.isnan(many["centre"][4]).all()
  assert json.loads(str(many["failed"])) == {"img4": "truncated"}
  res = json.loads(str(many["res"]))
  want1, want5 = _numpy_errors(logits, labels)
  assert res["num_examples"] == 7
  assert res["top1_error"] == pytest.approx(want1)
  assert res["top5_error"] == pytest.approx(want5)


def test_command_on_an_image_folder_lists_undecodable_images(tmp_path):
  # The real pipeline: JPEGs of every aspect ratio in class folders, plus a
  # truncated and an empty file (as ImageNet's own folders can hold).
  import json
  import data_fixtures
  from vgg_jax import weights
  root = tmp_path / "data"
  classes = ["cat", "dog"]
  data_fixtures.make_image_folder(root, classes, 1, split="train")
  files = data_fixtures.make_image_folder(root, classes, 2,
                                          split="validation", nasty=True)
  kw = dict(name="A", width_mult=0.125, fc_width=32, num_classes=2)
  model = create_model(rngs=nnx.Rngs(0), init="he", **kw)
  weights.save_pretrained(tmp_path / "m", model, model_kwargs=kw,
                          input_convention=conventions.TORCHVISION,
                          source="t", class_names=classes,
                          extra={"train_scale": 224})
  report = evaluate.main([
      "--model", str(tmp_path / "m"), "--data", "folder", "--data-dir",
      str(root), "--split", "validation", "--protocol", "dense",
      "--scales", "paper-single", "--batch-size", "4",
      # One big bucket: every image on a 448x448 canvas, one compilation.
      "--bucket-step", "448", "--output",
      str(tmp_path / "out"), "--save-posteriors"])
  assert report["num_examples"] == len(files) == 10
  assert report["num_failed"] == 2 and report["num_evaluated"] == 8
  failed = {f["name"] for f in report["failed"]}
  assert len(failed) == 2 and all("truncated" in f or "empty" in f
                                  for f in failed)
  saved = evaluate.SplitPosteriors.load(tmp_path / "out" /
                                        "posteriors_0_A.npz")
  post = saved.posteriors["dense@224"]
  assert np.isnan(post).any(axis=1).sum() == 2
  labels = saved.labels
  ok = ~np.isnan(post).any(axis=1)
  want_top1 = 1 - (np.argmax(post[ok], 1) == labels[ok]).sum() / 10
  assert report["rows"][0]["top1_error"] == pytest.approx(want_top1)
  assert report["rows"][0]["top5_error"] == pytest.approx(0.2)  # 2 classes
  on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
  assert on_disk["num_failed"] == 2
  assert "could not be decoded" in (tmp_path / "out" / "results.md"
                                    ).read_text()


def test_training_evaluator_counts_undecodable_images_as_misses(tmp_path):
  # The "classification" evaluator (training's validation, and `evaluate
  # --config`): every example of the split counts once; an undecodable image
  # is a miss, never dropped.  Checked against the same evaluator on the
  # split without those files (the decodable images score the same).
  import shutil
  import ml_collections
  import data_fixtures
  from vgg_jax import input_pipeline
  from vgg_jax.eval import evaluators
  root = tmp_path / "data"
  classes = ["cat", "dog"]
  data_fixtures.make_image_folder(root, classes, 1, split="train")
  files = data_fixtures.make_image_folder(root, classes, 2,
                                          split="validation", nasty=True)
  clean = tmp_path / "clean"
  shutil.copytree(root, clean)
  for tag in data_fixtures.UNDECODABLE:
    for f in clean.glob(f"validation/*/*_nasty_{tag}.JPEG"):
      f.unlink()
  model = create_model("A", rngs=nnx.Rngs(0), init="he", head_window=1,
                       width_mult=0.125, fc_width=32, num_classes=2)

  def run(data_dir):
    data = input_pipeline.default_data_config("folder")
    data.data_dir = str(data_dir)
    data.crop_size, data.eval_scale, data.train_scale = 32, 32, 32
    config = ml_collections.ConfigDict({"data": data, "eval_batch_size": 4})
    (ev,) = evaluators.evaluators_from_config(config)
    return ev.evaluate(model, convention=input_pipeline.input_convention(
        data))

  with_bad, without = run(root), run(clean)
  assert with_bad["val_examples"] == len(files) == 10
  assert with_bad["val_undecodable"] == 2
  assert without["val_examples"] == 8 and without["val_undecodable"] == 0
  hits = round((1 - without["val_top1_error"]) * 8)  # of the 8 decodable
  assert with_bad["val_top1_error"] == pytest.approx(1 - hits / 10)
  assert without["val_top5_error"] == 0  # 2 classes: top-5 always hits
  assert with_bad["val_top5_error"] == pytest.approx(0.2)
