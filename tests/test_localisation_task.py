"""Appendix A.1 plugged into the loop: the box_regression task's loss, a few
real training steps, the loc_records source's box geometry."""

import io
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from PIL import Image

import vgg_jax.localisation  # noqa: F401  (registers)
from vgg_jax import input_pipeline, preprocess, tasks, train
from vgg_jax.localisation import source as loc_source
from vgg_jax.localisation import task as loc_task
from vgg_jax.localisation import synth
from vgg_jax.models import create_model

C = 5


def tiny(outputs, seed=0):
  return create_model("A", num_classes=outputs, width_mult=0.0625,
                      fc_width=16, head_window=1, init="he",
                      dropout_rate=0.0, rngs=nnx.Rngs(seed))


def batch(n=6, seed=0):
  r = np.random.default_rng(seed)
  return {"image": r.normal(size=(n, 32, 32, 3)).astype(np.float32),
          "box": r.uniform(0, 1, (n, 4)).astype(np.float32),
          "box_valid": np.array([1, 0, 1, 1, 0, 1][:n], np.int32),
          "label": r.integers(0, C, n).astype(np.int32)}


@pytest.mark.parametrize("regression", ["scr", "pcr"])
def test_loss_is_euclidean_on_the_ground_truth_class(regression):
  task = loc_task.BoxRegression(regression)
  outputs = task.adapt_model_kwargs({"num_classes": C})["num_classes"]
  assert outputs == (4 if regression == "scr" else 4 * C)
  model = tiny(outputs)
  b = batch()
  loss, _ = task.loss(model, {k: jnp.asarray(v) for k, v in b.items()},
                      rngs=nnx.Rngs(dropout=0))
  out = np.asarray(model(jnp.asarray(b["image"])), np.float64)
  expected_sum, nvalid = 0.0, 0
  for i in range(len(out)):
    if not b["box_valid"][i]:
      continue
    lo = 0 if regression == "scr" else 4 * b["label"][i]
    d = out[i, lo:lo + 4] - b["box"][i]
    expected_sum += 0.5 * float(d @ d)
    nvalid += 1
  np.testing.assert_allclose(float(loss), expected_sum / nvalid, rtol=1e-5)


def test_no_valid_crop_gives_zero_loss():
  task = loc_task.BoxRegression("scr")
  b = batch()
  b["box_valid"][:] = 0
  loss, _ = task.loss(tiny(4), {k: jnp.asarray(v) for k, v in b.items()},
                      rngs=nnx.Rngs(dropout=0))
  assert float(loss) == 0.0


def test_get_task_reads_the_config():
  c = ml_collections.ConfigDict({"task": "box_regression",
                                 "localisation": {"regression": "pcr"}})
  t = tasks.get_task(c)
  assert isinstance(t, loc_task.BoxRegression) and t.regression == "pcr"
  with pytest.raises(ValueError, match="regression"):
    loc_task.BoxRegression("xyz")


def test_init_from_classifier_keeps_a_fresh_box_layer():
  cls, loc = tiny(C, seed=1), tiny(4, seed=2)
  fresh = np.asarray(loc.fc3.kernel.get_value()).copy()
  copied = train.copy_matching_layers(loc, cls)
  assert not any(p.startswith("fc3") for p in copied)
  assert any(p.startswith("fc1") for p in copied)
  np.testing.assert_array_equal(loc.fc3.kernel.get_value(), fresh)
  np.testing.assert_array_equal(loc.fc1.kernel.get_value(),
                                cls.fc1.kernel.get_value())


@pytest.mark.parametrize("regression", ["scr", "pcr"])
def test_a_few_real_steps_lower_the_loss(regression):
  task = loc_task.BoxRegression(regression)
  model = tiny(task.adapt_model_kwargs({"num_classes": C})["num_classes"])
  tx = optax.sgd(1e-3, momentum=0.9)
  graphdef, state = train.create_train_state(model, tx)
  step = jax.jit(train.train_step_fn(graphdef, tx, seed=0, task=task))
  b = {k: jnp.asarray(v) for k, v in batch().items()}
  losses = []
  for _ in range(15):
    metrics = train.init_metrics(task)
    state, metrics = step(state, metrics, b)
    losses.append(task.summarise(jax.device_get(metrics))["train_loss"])
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.5 * losses[0], losses


def _jpeg(h, w, seed=0):
  img = np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8)
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="PNG")  # lossless: exact sizes
  return buf.getvalue()


@pytest.mark.parametrize("seed", range(6))
def test_source_moves_the_box_like_hand_arithmetic(seed):
  cfg = input_pipeline.default_data_config("loc_records")
  cfg.crop_size = 32
  cfg.train_scale = (36, 52)
  h, w = 60, 90
  box = np.array([30.0, 10.0, 59.0, 45.0])  # inclusive pixel ends
  rec = {"image": _jpeg(h, w, seed), "image_id": "x", "label": 2,
         "height": h, "width": w, "boxes": box[None].astype(np.float32),
         "box_labels": np.array([2])}
  ex = loc_source.LocTrainExample(cfg)
  img, label, target, valid = ex(rec, np.random.default_rng(seed))
  # The same draws, by hand.
  r = np.random.default_rng(seed)
  s = int(r.integers(36, 53))
  nh, nw = s, int(round(w * s / h))
  top = int(r.integers(0, nh - 32 + 1))
  left = int(r.integers(0, nw - 32 + 1))
  flip = r.random() < 0.5
  sx, sy = nw / w, nh / h
  x0, x1 = box[0] * sx - left, (box[2] + 1) * sx - left  # continuous [x0, x1)
  y0, y1 = box[1] * sy - top, (box[3] + 1) * sy - top
  if flip:
    x0, x1 = 32 - x1, 32 - x0
  vis = (max(0, min(x1, 32) - max(x0, 0)) * max(0, min(y1, 32) - max(y0, 0))
         / ((x1 - x0) * (y1 - y0)))
  assert label == 2 and img.shape == (32, 32, 3)
  assert bool(valid) == (vis >= 0.5)
  if valid:
    want = [(x0 + x1) / 2 / 32, (y0 + y1) / 2 / 32, (x1 - x0) / 32,
            (y1 - y0) / 32]
    np.testing.assert_allclose(target, want, atol=1e-5)
  # The image crop is the same geometry.
  full = preprocess.rescale_shorter_side(preprocess.decode_image(rec["image"]),
                                         s)
  crop = full[top:top + 32, left:left + 32]
  np.testing.assert_array_equal(img, crop[:, ::-1] if flip else crop)


@pytest.mark.skipif(
    not pathlib.Path(synth.FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz"
                     ).exists(), reason="apt-get install dataset-fashion-mnist")
def test_source_batches_follow_the_global_order_on_any_process_count(
    tmp_path):
  synth.make_dataset(tmp_path, num_train=12, num_val=2, seed=3)
  cfg = input_pipeline.default_data_config("loc_records")
  cfg.data_dir, cfg.crop_size, cfg.train_scale = str(tmp_path), 48, (48, 64)
  conv = input_pipeline.input_convention(cfg)

  def run(procs, steps=2):
    its = [input_pipeline.create_train_iterator(
        cfg, global_batch_size=8, seed=5, input_convention=conv,
        process_index=p, process_count=procs) for p in range(procs)]
    return [[next(it) for it in its] for _ in range(steps)]

  one, two = run(1), run(2)
  for (ref,), parts in zip(one, two):
    for k in ref:
      np.testing.assert_array_equal(np.concatenate([b[k] for b in parts]),
                                    ref[k], err_msg=k)
  # Process 1's rows of step 1 are the examples at their global positions,
  # each augmented (S, crop, flip, and the box with them) by the generator
  # of its global position.
  rows = input_pipeline.train_batches(12, seed=5, local_batch=4,
                                      process_index=1, process_count=2)[1]
  np.testing.assert_array_equal(rows["position"], [12, 13, 14, 15])
  records = loc_source.LocEvalSource(cfg, "train")
  ex = loc_source.LocTrainExample(cfg)
  got = two[1][1]
  for j, (i, g) in enumerate(zip(rows["index"], rows["position"])):
    img, label, box, valid = ex(records.record(i), input_pipeline.example_rng(
        input_pipeline.derived_seed(5, 1), g))
    np.testing.assert_allclose(got["image"][j], conv.normalise(img),
                               atol=1e-4)
    assert got["label"][j] == label and got["box_valid"][j] == valid
    np.testing.assert_array_equal(got["box"][j], box)
