"""AlexNet's own input and test (Krizhevsky et al. 2012; the paper's §4.5
baseline): the 10-crop protocol against crops cut by hand, and training
crops from the central square."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from vgg_jax import conventions, evaluate, preprocess, weights
from vgg_jax.models import create_model


def _hand_ten(img, s, crop):
  """The 10 patches written with numpy slicing: the central s x s square of
  an image whose shorter side is s, its corners and centre, then flips."""
  h, w = img.shape[:2]
  t0, l0 = (h - s) // 2, (w - s) // 2
  sq = img[t0:t0 + s, l0:l0 + s]
  d = s - crop
  c = d // 2
  five = [sq[:crop, :crop], sq[:crop, d:], sq[d:, :crop], sq[d:, d:],
          sq[c:c + crop, c:c + crop]]
  return np.stack(five + [p[:, ::-1] for p in five])


@pytest.mark.parametrize("shape", [(40, 61, 3), (71, 40, 3), (40, 40, 1)])
def test_tencrop_views_equal_hand_cut_crops(shape):
  img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  views = preprocess.protocol_views(img, "tencrop", 32, flips=True)
  np.testing.assert_array_equal(views, _hand_ten(img, min(shape[:2]), 32))
  five = preprocess.protocol_views(img, "tencrop", 32, flips=False)
  np.testing.assert_array_equal(five, views[:5])


def test_central_square_training_crops_stay_inside_the_square():
  rng = np.random.default_rng(1)
  h, w, crop = 256, 400, 224
  left0 = (w - h) // 2  # the square spans columns [72, 328)
  tops, lefts = zip(*[preprocess.random_crop_offsets(
      (h, w), crop, rng, central_square=True) for _ in range(400)])
  assert min(lefts) >= left0 and max(lefts) + crop <= left0 + h
  assert min(tops) >= 0 and max(tops) + crop <= h
  # Uniform over the square's 33 positions: both extremes are reached.
  assert min(lefts) == left0 and max(lefts) == left0 + h - crop
  # Without the option, crops range over the whole width.
  free = [preprocess.random_crop_offsets((h, w), crop, rng)[1]
          for _ in range(400)]
  assert max(free) > left0 + h - crop
  img = np.arange(h * w).reshape(h, w, 1)
  patch = preprocess.random_crop(img, crop, np.random.default_rng(2),
                                 central_square=True)
  cols = patch[0, :, 0] % w
  assert cols.min() >= left0 and cols.max() < left0 + h


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_command_tencrop_equals_hand_cut_softmax_average(tmp_path):
  from vgg_jax import input_pipeline
  kw = dict(name="A", num_classes=10, width_mult=0.125, fc_width=64,
            head_window=1, in_channels=1)
  model = create_model(**kw, init="he", rngs=nnx.Rngs(3))
  conv = conventions.InputConvention("RGB", 1.0, (72.94,), (1.0,))
  weights.save_pretrained(
      tmp_path / "m", model, model_kwargs=kw, input_convention=conv,
      source="test", class_names=list(input_pipeline.FASHION_MNIST_CLASSES),
      extra={"train_scale": 32, "crop_size": 32})
  report = evaluate.main([
      "--model", str(tmp_path / "m"), "--data", "fashion_mnist",
      "--protocol", "tencrop", "--scales", "40", "--limit", "6",
      "--batch-size", "3", "--output", str(tmp_path / "out"),
      "--save-posteriors"])
  cfg = input_pipeline.default_data_config("fashion_mnist")
  it = input_pipeline.create_eval_iterator(
      cfg, global_batch_size=1, input_convention=conv, protocol="dense",
      scale=40, batch=False)
  exs = [ex for _, ex in zip(range(6), it)]
  crops = np.stack([_hand_ten(np.asarray(ex["image"]).reshape(40, 40, 1),
                              40, 32) for ex in exs])
  x = conv.normalise(crops.reshape((-1, 32, 32, 1)))
  want = _softmax(np.asarray(model(x))).reshape(6, 10, 10).mean(1)
  saved = evaluate.SplitPosteriors.load(tmp_path / "out" /
                                        "posteriors_0_A.npz")
  np.testing.assert_allclose(saved.posteriors["tencrop@40"], want, atol=1e-5)
  labels = np.array([ex["label"] for ex in exs])
  assert report["rows"][0]["top1_error"] == pytest.approx(
      np.mean(want.argmax(1) != labels))
