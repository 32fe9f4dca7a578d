"""The Appendix B descriptor math against hand-computed cases."""

import numpy as np
import pytest

from vgg_jax.transfer import descriptor as dsc


def _map(values, h=2, w=3):
  """An (h, w, C) map whose every position holds ``values``, except that
  position (0, 0) carries twice ``values`` and (h-1, w-1) zero, so that the
  mean is still ``values``."""
  v = np.asarray(values, np.float32)
  m = np.tile(v, (h, w, 1))
  m[0, 0] = 2 * v
  m[h - 1, w - 1] = 0
  return m


def test_single_scale_pool_flip_normalise_by_hand():
  spec = dsc.DescriptorSpec(scales=(256,), aggregation="average")
  d = dsc.net_descriptor({256: _map([3.0, 0.0])}, spec,
                         flipped={256: _map([1.0, 4.0], h=2, w=3)})
  # Pools (3, 0) and (1, 4); flip-average (2, 2); L2 -> (1, 1)/sqrt 2.
  np.testing.assert_allclose(d, [2 ** -0.5, 2 ** -0.5], rtol=1e-6)


def test_scales_average_vs_stack_by_hand():
  maps = {256: np.array([3.0, 4.0]), 384: np.array([0.0, 0.0]),
          512: np.array([3.0, 4.0])}
  flipped = {q: m.copy() for q, m in maps.items()}
  avg = dsc.net_descriptor(maps, dsc.DescriptorSpec((256, 384, 512),
                                                    "average"), flipped)
  # Mean over Q (2, 8/3) then L2: (3, 4)/5.
  np.testing.assert_allclose(avg, [0.6, 0.8], rtol=1e-6)
  st = dsc.net_descriptor(maps, dsc.DescriptorSpec((256, 384, 512),
                                                   "stack"), flipped)
  # Stacked (3, 4, 0, 0, 3, 4), normalised ONCE as a whole (norm sqrt 50),
  # not per scale (that would give (.6, .8, 0, 0, .6, .8), norm sqrt 2).
  np.testing.assert_allclose(st, np.array([3, 4, 0, 0, 3, 4]) / 50 ** 0.5,
                             rtol=1e-6)
  assert np.linalg.norm(st) == pytest.approx(1.0)
  # Stacking follows the spec's scale order.
  st2 = dsc.net_descriptor(maps, dsc.DescriptorSpec((384, 256, 512),
                                                    "stack"), flipped)
  np.testing.assert_allclose(st2[:2], [0, 0])


def test_any_spatial_size_and_masked_pooling():
  rng = np.random.default_rng(0)
  a = rng.random((3, 5, 4)).astype(np.float32)
  b = rng.random((6, 2, 4)).astype(np.float32)
  # A padded batch on one (6, 5) canvas, padding filled with garbage.
  canvas = rng.random((2, 6, 5, 4)).astype(np.float32) * 100
  canvas[0, :3, :5] = a
  canvas[1, :6, :2] = b
  mask = np.zeros((2, 6, 5), bool)
  mask[0, :3, :5] = True
  mask[1, :6, :2] = True
  pooled = dsc.global_average_pool(canvas, mask)
  np.testing.assert_allclose(pooled[0], a.reshape(-1, 4).mean(0), rtol=1e-6)
  np.testing.assert_allclose(pooled[1], b.reshape(-1, 4).mean(0), rtol=1e-6)
  # Already-pooled vectors pass through; maps and vectors give one answer.
  spec = dsc.DescriptorSpec((256,), "average", flip=False)
  np.testing.assert_allclose(dsc.net_descriptor({256: a}, spec),
                             dsc.net_descriptor({256: pooled[0]}, spec),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="no valid position"):
    dsc.global_average_pool(canvas, np.zeros((2, 6, 5), bool))


def test_flip_average_commutes_with_pooling():
  rng = np.random.default_rng(1)
  m = rng.random((4, 7, 8))
  f = rng.random((4, 7, 8))
  np.testing.assert_allclose(
      dsc.flip_average(dsc.global_average_pool(m), dsc.global_average_pool(f)),
      dsc.global_average_pool((m + f) / 2), rtol=1e-5)


def test_nets_stacked_and_action_variant():
  spec = dsc.DescriptorSpec((256,), "average", nets=("D", "E"))
  maps = {"D": {256: np.array([0.0, 2.0])}, "E": {256: np.array([1.0, 1.0,
                                                                 1.0])}}
  flipped = {"D": {256: np.array([0.0, 2.0])},
             "E": {256: np.array([1.0, 1.0, 1.0])}}
  d = dsc.image_descriptor(maps, spec, flipped)
  # Each net's descriptor L2-normalised, then stacked: norm sqrt 2.
  np.testing.assert_allclose(d, [0, 1] + [3 ** -0.5] * 3, rtol=1e-6)
  renorm = dsc.image_descriptor(
      maps, dsc.DescriptorSpec((256,), "average", nets=("D", "E"),
                               renormalise=True), flipped)
  np.testing.assert_allclose(renorm, d / 2 ** 0.5, rtol=1e-6)
  act = dsc.action_descriptor(d, 2 * d)
  np.testing.assert_allclose(act, np.concatenate([d, 2 * d]))
  assert spec.dim(2) == 4 and dsc.voc_action_spec().dim() == 4096 * 4
  assert dsc.caltech_spec().dim() == 4096 * 3 * 2
  assert dsc.voc_spec().dim() == 4096 * 2


def test_zero_descriptor_and_errors():
  spec = dsc.DescriptorSpec((256,), "average", flip=False)
  np.testing.assert_array_equal(
      dsc.net_descriptor({256: np.zeros((2, 2, 3))}, spec), np.zeros(3))
  with pytest.raises(ValueError, match="scales"):
    dsc.net_descriptor({384: np.ones(3)}, spec)
  with pytest.raises(ValueError, match="flipped"):
    dsc.net_descriptor({256: np.ones(3)}, dsc.DescriptorSpec((256,)))
  with pytest.raises(ValueError, match="aggregation"):
    dsc.DescriptorSpec((256,), "max")
  spec2 = dsc.caltech_spec()
  assert dsc.DescriptorSpec.from_json(spec2.to_json()) == spec2
  assert spec2.scales == (256, 384, 512) and spec2.aggregation == "stack"
  assert dsc.voc_spec().scales == (256, 384, 512, 640, 768)
