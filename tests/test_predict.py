"""python -m vgg_jax.predict: top-5 with names, and the score-map heat map."""

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from vgg_jax import conventions, predict, preprocess, weights
from vgg_jax.models import create_model

KW = dict(name="A", width_mult=0.125, fc_width=64, num_classes=7)
NAMES = ["cat", "dog", "rocket", "coffee", "face", "galaxy", "flower"]


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_predict_top5_names_and_heatmap(tmp_path, capsys):
  import skimage.data
  model = create_model(rngs=nnx.Rngs(3), init="he",
                       **{k: v for k, v in KW.items()})
  weights.save_pretrained(tmp_path / "w", model, model_kwargs=KW,
                          input_convention=conventions.TORCHVISION,
                          source="test", class_names=NAMES)
  photo = skimage.data.chelsea()  # 300x451 RGB
  Image.fromarray(photo).save(tmp_path / "cat.jpg", quality=95)
  out = predict.main([str(tmp_path / "cat.jpg"), "--model", str(tmp_path / "w"),
                      "--scale", "256", "--heatmap",
                      str(tmp_path / "heat.png")])
  # Reference: the decoded, rescaled image through the model alone + flip.
  img = preprocess.rescale_shorter_side(preprocess.decode_image(
      (tmp_path / "cat.jpg").read_bytes()), 256)
  x = conventions.TORCHVISION.normalise(img)[None]
  want = (_softmax(np.asarray(model(x)))[0]
          + _softmax(np.asarray(model(x[:, :, ::-1])))[0]) / 2
  top = out[0]["top"]
  assert [t[0] for t in top] == list(np.argsort(-want)[:5])
  np.testing.assert_allclose([t[2] for t in top], np.sort(want)[::-1][:5],
                             atol=1e-5)
  assert [t[1] for t in top] == [NAMES[t[0]] for t in top]
  printed = capsys.readouterr().out
  assert f"1. {top[0][1]}" in printed
  heat = np.asarray(Image.open(tmp_path / "heat.png"))
  assert heat.shape == img.shape  # drawn over the rescaled image
  # The map itself: soft-max of the score map of the top class; its mean
  # over positions is a probability and it varies over the image.
  hm = predict.score_heatmap(predict.model_dir.load_model(tmp_path / "w"),
                             img, top[0][0])
  assert hm.shape == (256 // 32 - 6, round(451 * 256 / 300) // 32 - 6)
  assert 0 <= hm.min() <= hm.max() <= 1 and hm.std() > 0


def test_imagenet_names_from_tfds_metadata():
  names = predict.class_names_of({}, 1000)
  assert len(names) == 1000 and names[0] == "tench" and names[1] == "goldfish"
  assert names[207] == "golden retriever"
  assert predict.class_names_of({"class_names": ["a", "b"]}, 2) == ["a", "b"]


def test_scale_below_the_crop_is_refused(tmp_path):
  model = create_model(rngs=nnx.Rngs(0), **KW)
  weights.save_pretrained(tmp_path / "w", model, model_kwargs=KW,
                          input_convention=conventions.PAPER, source="test")
  with pytest.raises(ValueError, match="smaller than .* 224x224"):
    predict.main(["nothing.jpg", "--model", str(tmp_path / "w"),
                  "--scale", "200"])


def test_heatmap_values_sit_at_their_window_centres():
  # Position (1, 2) of a 3x4 score map is the window with top-left corner
  # (32, 64), centred at (32 + 112, 64 + 112) in a 320x352 image.
  heat = np.zeros((3, 4), np.float32)
  heat[1, 2] = 1.0
  img = np.zeros((320, 352, 3), np.uint8)
  drawn = predict.overlay(img, heat, stride=32, window=224, alpha=1.0)
  hot = drawn[144, 176]
  cold = drawn[112, 112]  # centre of window (0, 0)
  assert hot[0] > 100 and hot[2] < 50  # JET: 1 -> red
  assert cold[2] > 100 and cold[0] < 50  # JET: 0 -> blue
  # The border no window is centred on takes the nearest value.
  np.testing.assert_array_equal(drawn[0, 0], cold)
  from vgg_jax.models import net_spec
  assert predict.map_stride(net_spec("D")) == 32
