"""Caffe's ceil pooling (``pool_rounding="ceil"``) against an independent
Caffe-style pooling written here with explicit loops, the masked (batched
canvas) evaluation against each image alone, dense evaluation of a real
photo, and the rounding an import records."""

from __future__ import annotations

import math

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import data as skdata
from skimage import transform as sktransform

from vgg_jax import conventions
from vgg_jax import model_dir
from vgg_jax import weights
from vgg_jax.eval import dense
from vgg_jax.models import create_model, geometry, net_spec
from vgg_jax.models import vgg as vgg_lib


def caffe_max_pool(x: np.ndarray, k: int, s: int) -> np.ndarray:
  """Caffe's PoolingLayer (MAX, pad 0), transcribed loop by loop:
  pooled = ceil((in - k) / s) + 1; each window clipped to the input."""
  n, h, w, c = x.shape
  ph = int(math.ceil((h - k) / s)) + 1
  pw = int(math.ceil((w - k) / s)) + 1
  out = np.empty((n, ph, pw, c), x.dtype)
  for i in range(ph):
    for j in range(pw):
      hs, ws = i * s, j * s
      he, we = min(hs + k, h), min(ws + k, w)
      out[:, i, j, :] = x[:, hs:he, ws:we, :].max(axis=(1, 2))
  return out


@pytest.mark.parametrize("k,s", [(2, 2), (3, 2)])
@pytest.mark.parametrize("h,w", [(7, 9), (13, 11), (8, 5), (3, 4)])
def test_ceil_pool_matches_caffe_loops(k, s, h, w):
  rng = np.random.default_rng(h * 100 + w + k)
  x = rng.normal(size=(2, h, w, 3)).astype(np.float32)
  ref = caffe_max_pool(x, k, s)
  got = np.asarray(vgg_lib.max_pool(jnp.asarray(x), k, s, "ceil"))
  np.testing.assert_array_equal(got, ref)
  assert got.shape[1:3] == (geometry.pooled_side(h, k, s, "ceil"),
                            geometry.pooled_side(w, k, s, "ceil"))
  floor = np.asarray(vgg_lib.max_pool(jnp.asarray(x), k, s))
  assert floor.shape[1:3] == ((h - k) // s + 1, (w - k) // s + 1)
  # Where both exist, the full windows agree.
  np.testing.assert_array_equal(ref[:, :floor.shape[1], :floor.shape[2]],
                                floor)


def test_pooled_side_formula_on_arrays_and_ints():
  sizes = np.arange(2, 60)
  for k, s in ((2, 2), (3, 2)):
    want = np.array([math.ceil((n - k) / s) + 1 for n in sizes])
    np.testing.assert_array_equal(
        np.asarray(geometry.pooled_side(jnp.asarray(sizes), k, s, "ceil")),
        want)
    assert [geometry.pooled_side(int(n), k, s, "ceil") for n in sizes] == \
        list(want)
  with pytest.raises(ValueError, match="floor' or 'ceil"):
    geometry.pooled_side(10, 2, 2, "round")
  with pytest.raises(ValueError, match="pool_rounding"):
    net_spec("A", pool_rounding="up")


def _small(name="A", rounding="ceil", seed=0):
  return create_model(name, num_classes=5, width_mult=1 / 16, fc_width=16,
                      head_window=1, init="glorot", pool_rounding=rounding,
                      rngs=nnx.Rngs(seed))


def test_model_sizes_follow_geometry():
  model = _small()
  for side in (32, 45, 70, 97):
    x = jnp.zeros((1, side, side + 13, 3))
    out = nnx.eval_shape(lambda m, x: m.score_map(x), model, x)
    assert out.shape[1:3] == (geometry.map_size(model.spec, side),
                              geometry.map_size(model.spec, side + 13))
    # VGG: five 2x2 pools; ceil -> ceil(H / 32).
    assert out.shape[1] == math.ceil(side / 32)


def test_masked_canvas_equals_each_image_alone_with_ceil():
  # Sizes where floor and ceil differ: the partial edge windows must see
  # only the image, not the rest of the shared canvas.
  model = _small(seed=1)
  rng = np.random.default_rng(0)
  sizes = [(45, 77), (70, 33)]
  canvas = np.zeros((2, 96, 96, 3), np.float32)
  alone = []
  for i, (h, w) in enumerate(sizes):
    img = rng.normal(size=(h, w, 3)).astype(np.float32)
    canvas[i, :h, :w] = img
    # Garbage beyond the image: must not leak in.
    canvas[i, h:, :] = 50.0
    canvas[i, :, w:] = 50.0
    alone.append(np.asarray(model.score_map(jnp.asarray(img[None])))[0])
  maps, hw = model.score_map(jnp.asarray(canvas),
                             valid_hw=jnp.asarray(sizes, jnp.int32))
  maps, hw = np.asarray(maps), np.asarray(hw)
  assert np.isfinite(maps).all()
  for i, ref in enumerate(alone):
    assert tuple(hw[i]) == ref.shape[:2]
    np.testing.assert_allclose(maps[i, :hw[i, 0], :hw[i, 1]], ref,
                               rtol=1e-4, atol=1e-5)


def test_dense_evaluation_of_a_real_photo_with_ceil():
  # skimage's cat photo (300x451) rescaled to Q = 80: 80x120, where
  # floor (2x3 map) and ceil (3x4) differ.
  photo = skdata.chelsea()
  q = 80
  h, w = q, round(photo.shape[1] * q / photo.shape[0])
  img = (sktransform.resize(photo, (h, w), anti_aliasing=True,
                            preserve_range=True)).round().astype(np.uint8)
  model = _small(seed=2)
  assert geometry.map_size(model.spec, h) != geometry.map_size(
      net_spec("A", width_mult=1 / 16, fc_width=16, head_window=1), h)
  engine = dense.DenseEngine(model, conventions.CAFFE)
  canvas = np.zeros((1, 96, 128, 3), np.uint8)
  canvas[0, :h, :w] = img
  got = engine.images(canvas, np.array([[h, w]]), batch=1, flips=False)
  # Independently: the image alone, its whole score map averaged, soft-max.
  x = jnp.asarray(conventions.CAFFE.normalise(img[None]))
  scores = np.asarray(model.score_map(x))[0]
  assert scores.shape[:2] == (3, 4)
  logits = scores.reshape(-1, scores.shape[-1]).mean(0)
  ref = np.exp(logits - logits.max())
  np.testing.assert_allclose(np.asarray(got)[0], ref / ref.sum(), rtol=1e-4,
                             atol=1e-6)


def test_import_records_rounding_and_loading_uses_it(tmp_path):
  net = _small(rounding="ceil", seed=3)
  kwargs = dict(name="A", num_classes=5, width_mult=1 / 16, fc_width=16,
                head_window=1, in_channels=3, pool_rounding="ceil")
  out = weights.save_pretrained(tmp_path / "w", net, model_kwargs=kwargs,
                                input_convention=conventions.CAFFE,
                                source="test")
  loaded = model_dir.load_model(out)
  assert loaded.model.spec.pool_rounding == "ceil"
  assert loaded.model.score_map(jnp.zeros((1, 45, 45, 3))).shape[1] == 2
