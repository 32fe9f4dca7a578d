"""The seams Appendices A and B code against: geometry, masked features,
heads, the dense engine's outputs, tasks, evaluators, progress."""

import io
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from vgg_jax import conventions, progress, tasks
from vgg_jax.eval import dense as dense_lib
from vgg_jax.eval import evaluators as evaluators_lib
from vgg_jax.models import LinearHead, create_model, geometry, net_spec

TINY = dict(width_mult=1 / 16, fc_width=16)


@pytest.mark.parametrize("name", ["A", "E", "alexnet"])
def test_geometry_matches_the_model(name):
  # The formulas against the shapes the model actually produces.
  spec = net_spec(name, **TINY)
  for size in (224, 227, 256, 301):
    out = nnx.eval_shape(lambda: create_model(
        name, rngs=nnx.Rngs(0), **TINY).score_map(
            jnp.zeros((1, size, size + 32, 3))))
    assert out.shape[1:3] == (geometry.map_size(spec, size),
                              geometry.map_size(spec, size + 32))
  if name != "alexnet":  # VGG: floor(H/32) - 6, 32 px apart (paper §3.2)
    assert geometry.map_size(spec, 384) == 384 // 32 - 6
    assert geometry.map_stride(spec) == 32
    assert geometry.min_input_size(spec) == 224


def test_masked_features_equal_each_image_alone():
  model = create_model("A", rngs=nnx.Rngs(3), head_window=1, **TINY)
  rng = np.random.default_rng(0)
  sizes = [(40, 72), (64, 33)]
  canvas = np.zeros((2, 64, 96, 3), np.float32)
  for i, (h, w) in enumerate(sizes):
    canvas[i, :h, :w] = rng.normal(size=(h, w, 3))
  f, hw = model.penultimate(jnp.asarray(canvas),
                            valid_hw=jnp.asarray(sizes, jnp.int32))
  for i, (h, w) in enumerate(sizes):
    alone = np.asarray(model.penultimate(jnp.asarray(canvas[i:i + 1, :h, :w])))
    assert tuple(hw[i]) == alone.shape[1:3]
    np.testing.assert_allclose(np.asarray(f)[i, :hw[i, 0], :hw[i, 1]],
                               alone[0], atol=1e-5, rtol=1e-5)


def test_box_head_replaces_fc3_and_keeps_the_parameter_names():
  model = create_model("A", rngs=nnx.Rngs(0), head_window=1, num_classes=10,
                       **TINY)
  names = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(
      nnx.state(model, nnx.Param))}
  assert {"fc3/kernel", "fc3/bias"} <= names
  model.fc3 = LinearHead(16, 4, rngs=nnx.Rngs(1))  # Appendix A, SCR
  x = jnp.ones((2, 32, 32, 3))
  assert model(x).shape == (2, 4)
  # The head on the FC2 map, written out by hand.
  fc2 = model.penultimate(x)
  want = fc2 @ model.fc3.kernel[...][0, 0] + model.fc3.bias[...]
  np.testing.assert_allclose(model.score_map(x), want, atol=1e-5, rtol=1e-5)


def test_dense_engine_descriptor_equals_pooled_fc2_of_image_and_flip():
  model = create_model("A", rngs=nnx.Rngs(4), head_window=1, **TINY)
  conv = conventions.TORCHVISION
  rng = np.random.default_rng(1)
  imgs = [rng.integers(0, 256, (h, w, 3), np.uint8)
          for h, w in ((40, 72), (64, 40))]
  engine = dense_lib.DenseEngine(model, conv, dense_lib.PooledDescriptor())
  out = {}
  batcher = dense_lib.DenseBatcher(engine, lambda rows, v: out.update(
      zip(rows, v)), bucket_step=32, batch_size=4)
  for i, img in enumerate(imgs):
    batcher.add(i, img)
  batcher.flush()
  assert engine.width == 16
  for i, img in enumerate(imgs):
    descs = [np.asarray(model.penultimate(jnp.asarray(
        conv.normalise(v)[None]))).mean(axis=(0, 1, 2))
             for v in (img, img[:, ::-1])]
    np.testing.assert_allclose(out[i], (descs[0] + descs[1]) / 2,
                               atol=1e-5, rtol=1e-5)


def test_classification_task_loss_and_metrics():
  model = create_model("A", rngs=nnx.Rngs(0), head_window=1, num_classes=10,
                       **TINY)
  task = tasks.Classification()
  batch = {"image": jnp.ones((4, 32, 32, 3)),
           "label": jnp.asarray([0, 1, 2, 3])}
  model.eval()
  loss, logits = task.loss(model, batch, rngs=nnx.Rngs(dropout=0))
  logp = jax.nn.log_softmax(logits)
  np.testing.assert_allclose(loss, -logp[jnp.arange(4), batch["label"]].mean(),
                             rtol=1e-6)
  m = task.update_metrics(task.init_metrics(), loss, logits, batch)
  hits = int((np.argmax(logits, -1) == np.arange(4)).sum())
  assert float(m["top1_hits"]) == hits and float(m["examples"]) == 4
  assert tasks.get_task({"task": None}).name == "classification"
  with pytest.raises(ValueError, match="unknown task"):
    tasks.get_task({"task": "nope"})


def test_a_new_task_plugs_into_the_unchanged_step():
  # Appendix A's shape of task: Euclidean loss on a 4-output head.
  from vgg_jax import train

  class Boxes(tasks.Task):
    batch_keys = ("image", "box")

    def loss(self, model, batch, *, rngs):
      pred = model(batch["image"], train=True, rngs=rngs)
      return jnp.mean(jnp.sum((pred - batch["box"]) ** 2, -1)), pred

  model = create_model("A", rngs=nnx.Rngs(0), head_window=1, num_classes=4,
                       dropout_rate=0.0, **TINY)
  tx = optax.sgd(0.1)
  graphdef, state = train.create_train_state(model, tx)
  step = jax.jit(train.train_step_fn(graphdef, tx, seed=0, task=Boxes()))
  batch = {"image": jnp.ones((2, 32, 32, 3)),
           "box": jnp.asarray([[0.1, 0.2, 0.5, 0.6]] * 2)}
  metrics = train.init_metrics(Boxes())
  losses = []
  for _ in range(3):
    state, metrics = step(state, metrics, batch)
    losses.append(float(metrics["loss_sum"]))
  assert int(metrics["steps"]) == 3 and float(metrics["examples"]) == 6
  assert "top1_hits" not in metrics
  # Summed losses grow by a decreasing amount: the loss goes down.
  assert losses[2] - losses[1] < losses[1] - losses[0]


def test_evaluators_from_config_and_registration():
  import ml_collections
  c = ml_collections.ConfigDict({"evals": {"val": {"type": "classification"},
                                           "d": {"type": "protocol",
                                                 "protocol": "dense"}}})
  evs = evaluators_lib.evaluators_from_config(c)
  by_name = {e.name: e for e in evs}
  assert {k: type(e).__name__ for k, e in by_name.items()} == {
      "val": "ClassificationEvaluator", "d": "ProtocolEvaluator"}
  assert by_name["d"].options == {"protocol": "dense"}

  @evaluators_lib.register_evaluator("test_constant")
  class Constant(evaluators_lib.Evaluator):
    def run(self, model, *, convention, mesh=None):
      return {"error": self.options["value"]}

  c = ml_collections.ConfigDict({"evals": {"loc": {"type": "test_constant",
                                                   "value": 0.25}}})
  (ev,) = evaluators_lib.evaluators_from_config(c)
  assert ev.evaluate(None, convention=None) == {"loc_error": 0.25}
  with pytest.raises(ValueError, match="unknown type 'nope'"):
    evaluators_lib.evaluators_from_config(ml_collections.ConfigDict(
        {"evals": {"x": {"type": "nope"}}}))


def test_progress_rate_eta_bar_and_log_lines(caplog):
  t = [0.0]
  out = io.StringIO()
  bar = progress.Progress(100, desc="eval", unit="images", stream=out,
                          tty=True, clock=lambda: t[0])
  t[0] = 10.0
  bar.update(25)  # 2.5 images/s, 75 left: 30 s
  assert "25/100 images" in bar.line() and "2.5 images/s" in bar.line()
  assert bar.eta() == pytest.approx(30.0)
  assert "ETA 0:00:30" in bar.line()
  bar.close()
  assert out.getvalue().startswith("\r[######") and out.getvalue().endswith(
      "\n")
  t[0] = 0.0
  quiet = progress.Progress(10, desc="prep", stream=io.StringIO(), tty=False,
                            log_every_s=5, clock=lambda: t[0])
  with caplog.at_level(logging.INFO, logger="vgg_jax.progress"):
    t[0] = 1.0
    quiet.update(1)  # too soon for a line
    t[0] = 6.0
    quiet.update(1)
    quiet.close()
  lines = [r.getMessage() for r in caplog.records]
  assert len(lines) == 2 and "2/10" in lines[0] and "(done)" in lines[1]
  assert progress.format_duration(3725) == "1:02:05"


def test_command_runs_the_config_evaluators_as_training_does(tmp_path):
  # `python -m vgg_jax.evaluate --config` builds the same evaluator objects
  # as training and gives the numbers a direct call gives.
  import json
  from vgg_jax import evaluate, input_pipeline, weights
  kw = dict(width_mult=0.125, fc_width=32, num_classes=10, head_window=1,
            in_channels=1)
  model = create_model("A", rngs=nnx.Rngs(0), init="he", **kw)
  cfg = input_pipeline.default_data_config("fashion_mnist")
  conv = input_pipeline.input_convention(cfg)
  weights.save_pretrained(tmp_path / "w", model,
                          model_kwargs=dict(name="A", **kw),
                          input_convention=conv, source="test",
                          class_names=list(input_pipeline.FASHION_MNIST_CLASSES),
                          extra={"train_scale": 32, "crop_size": 32})
  (tmp_path / "c.py").write_text(
      "from vgg_jax import configs\n"
      "def get_config(arg=None):\n"
      "  c = configs.base_config('fashion_mnist')\n"
      "  c.eval_batch_size = 1000\n"
      "  c.evals.dense = dict(type='protocol', protocol='dense', limit=40,\n"
      "                       batch_size=8)\n"
      "  c.evals.flip = dict(type='classification', flip=True)\n"
      "  return configs.lock(c)\n")
  out = evaluate.main(["--config", str(tmp_path / "c.py"), "--model",
                       str(tmp_path / "w"), "--output", str(tmp_path / "o")])
  got = out[str(tmp_path / "w")]
  assert got["val_examples"] == 10000 and got["dense_examples"] == 40
  # The protocol part, independently: dense posteriors of the first 40
  # test images (28x28 rescaled to 32 by the reader: the 1x1 map of image
  # and flip).
  from vgg_jax.data import readers
  _, labels = input_pipeline.fashion_mnist_split(cfg, "test")
  images = readers.fashion_mnist_resized(cfg, "test", 32)[0][:40]
  x = conv.normalise(images.reshape(40, 32, 32, 1))
  p = (jax.nn.softmax(model(x)) + jax.nn.softmax(model(x[:, :, ::-1]))) / 2
  p = np.asarray(p)
  top5 = np.argsort(-p, axis=1)[:, :5]
  want1 = np.mean(top5[:, 0] != labels[:40])
  want5 = np.mean(~(top5 == labels[:40, None]).any(axis=1))
  assert got["dense_top1_error"] == pytest.approx(want1, abs=1e-9)
  assert got["dense_top5_error"] == pytest.approx(want5, abs=1e-9)
  # The batched classifier with flip=True: the same formula on all 10,000.
  images = readers.fashion_mnist_resized(cfg, "test", 32)[0]
  x = conv.normalise(images.reshape(-1, 32, 32, 1))
  p = np.asarray((jax.nn.softmax(model(x)) + jax.nn.softmax(model(
      x[:, :, ::-1]))) / 2)
  assert got["flip_examples"] == 10000
  assert got["flip_top1_error"] == pytest.approx(
      np.mean(p.argmax(1) != labels), abs=1e-9)
  assert got["flip_top1_error"] != got["val_top1_error"]  # flips counted
  saved = json.loads((tmp_path / "o" / "evals.json").read_text())
  assert saved[str(tmp_path / "w")]["val_top1_error"] == got["val_top1_error"]
