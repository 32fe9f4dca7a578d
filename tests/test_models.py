"""Table 1 family: sizes, the dense head, LRN, initialisation, surgery."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vgg_jax.models import (MODEL_NAMES, PAPER_NETS, abstract_model,
                            count_macs, count_params, create_model,
                            init_from_a, local_response_norm, net_spec,
                            param_count)

# Exact parameter counts (from Table 1's layers) and MACs at 224 (paper Table 2 in
# millions: 133, 133, 133, 134, 138, 144).
EXACT_PARAMS = {
    "A": 132_863_336, "A-LRN": 132_863_336, "B": 133_047_848,
    "C": 133_638_952, "D": 138_357_544, "E": 143_667_240,
    "B-shallow": 134_503_528,
}
EXACT_GMACS = {"A": 7.609, "A-LRN": 7.609, "B": 11.308, "C": 11.771,
              "D": 15.470, "E": 19.632, "B-shallow": 9.356}
PAPER_TABLE2_MILLIONS = {"A": 133, "A-LRN": 133, "B": 133, "C": 134,
                         "D": 138, "E": 144}


@pytest.mark.parametrize("name", PAPER_NETS)
def test_parameter_counts_match_spec_without_allocating(name):
  model = abstract_model(name)  # jax.eval_shape: ShapeDtypeStructs only
  leaves = jax.tree_util.tree_leaves(nnx.state(model))
  assert all(isinstance(l, jax.ShapeDtypeStruct) for l in leaves)
  assert param_count(model) == EXACT_PARAMS[name]
  # The layer-table formula is a second, independent count.
  assert count_params(net_spec(name)) == EXACT_PARAMS[name]
  if name in PAPER_TABLE2_MILLIONS:
    assert round(EXACT_PARAMS[name] / 1e6) == PAPER_TABLE2_MILLIONS[name]


@pytest.mark.parametrize("name", PAPER_NETS)
def test_macs_at_224_match_spec(name):
  assert count_macs(net_spec(name), 224) / 1e9 == pytest.approx(
      EXACT_GMACS[name], abs=5e-4)


def test_weight_layer_counts_match_table1():
  expected = {"A": 11, "A-LRN": 11, "B": 13, "C": 16, "D": 16, "E": 19}
  for name, layers in expected.items():
    assert net_spec(name).weight_layers == layers


def test_torchvision_bn_and_alexnet_sizes():
  # torchvision's published vgg*_bn counts, and the single-tower AlexNet.
  assert param_count(abstract_model("D-BN")) == 138_365_992
  assert param_count(abstract_model("E-BN")) == 143_678_248
  assert param_count(abstract_model("A-BN")) == 132_868_840
  assert param_count(abstract_model("alexnet")) == 62_378_344


def _macs_without_padding(spec, size, num_classes):
  """MACs counting only taps that land inside the image (as XLA does)."""
  total, c_in = 0, 3
  for c in spec.convs:
    pad = c.kernel // 2 if c.padding == "SAME" else c.padding
    out = (size + 2 * pad - c.kernel) // c.stride + 1
    taps = sum(1 for o in range(out) for t in range(c.kernel)
               if 0 <= o * c.stride - pad + t < size)
    total += taps * taps * c_in * c.features
    c_in, size = c.features, out
    if c.pool_after:
      size = (size - spec.pool_window) // spec.pool_stride + 1
  n = size - spec.head_window + 1
  return total + n * n * (spec.head_window ** 2 * c_in * spec.fc_width
                          + spec.fc_width ** 2 + spec.fc_width * num_classes)


@pytest.mark.parametrize("name", ["D", "C", "alexnet", "B-shallow"])
def test_mac_formula_agrees_with_xla_cost_analysis(name):
  # XLA counts 2 flops per multiply-accumulate that touches the image (not
  # the zero padding), plus a little for bias, ReLU and pooling.  A formula
  # that missed or double counted a layer would be off by far more than 2%.
  size = 96 if name != "alexnet" else 224
  kw = dict(width_mult=0.25, fc_width=64, num_classes=10,
            head_window=(3 if name != "alexnet" else 6))
  spec = net_spec(name, width_mult=0.25, fc_width=64,
                  head_window=kw["head_window"])
  x = jnp.zeros((1, size, size, 3))

  def xla_flops(conv_impl):
    model = create_model(name, rngs=nnx.Rngs(0), conv_impl=conv_impl, **kw)
    graphdef, state = nnx.split(model)
    fwd = lambda s, x: nnx.merge(graphdef, s).score_map(x)
    cost = jax.jit(fwd).lower(state, x).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]

  exact = _macs_without_padding(spec, size, 10)
  assert xla_flops("xla") / 2 == pytest.approx(exact, rel=0.02)
  # The conventional count (ours, the paper's) includes the padded taps, as
  # the patches-times-matrix schedule computes them.
  macs = count_macs(spec, size, num_classes=10)
  assert exact < macs < 1.3 * exact
  # (plus bias, ReLU and pooling flops, relatively large in a narrow net).
  assert xla_flops("im2col") / 2 == pytest.approx(macs, rel=0.03)


def test_dense_path_on_224_equals_fc_path():
  model = create_model("D", rngs=nnx.Rngs(0), width_mult=0.125, fc_width=64,
                       num_classes=10, init="glorot")
  x = jax.random.normal(jax.random.key(1), (3, 224, 224, 3)) * 50.0
  dense_logits = model(x)
  # The FC path written out: flatten the 7x7xC body output in (H, W, C)
  # order and multiply by the FC weights as matrices.
  f = model.features(x)
  assert f.shape == (3, 7, 7, 64)
  w1 = model.fc1.kernel[...].reshape(-1, 64)
  h = jax.nn.relu(f.reshape(3, -1) @ w1 + model.fc1.bias[...])
  h = jax.nn.relu(h @ model.fc2.kernel[...][0, 0] + model.fc2.bias[...])
  fc_logits = h @ model.fc3.kernel[...][0, 0] + model.fc3.bias[...]
  np.testing.assert_allclose(dense_logits, fc_logits, rtol=1e-4, atol=1e-4)
  assert dense_logits.shape == (3, 10)


@pytest.mark.parametrize("hw", [(224, 224), (256, 256), (288, 320),
                                (383, 500), (512, 384), (255, 257)])
def test_score_map_size_follows_pooling_arithmetic(hw):
  model = abstract_model("E", width_mult=0.125, fc_width=32, num_classes=7)
  h, w = hw
  out = nnx.eval_shape(lambda m, x: m.score_map(x), model,
                       jax.ShapeDtypeStruct((2, h, w, 3), jnp.float32))
  # Five 2x2/2 VALID pools (floor), then the 7x7 VALID FC1.
  assert out.shape == (2, h // 32 - 6, w // 32 - 6, 7)


def test_score_map_of_larger_image_averages_to_logits():
  model = create_model("A", rngs=nnx.Rngs(0), width_mult=0.125, fc_width=32,
                       num_classes=5, init="glorot")
  x = jax.random.uniform(jax.random.key(0), (1, 320, 288, 3)) * 255
  smap = model.score_map(x)
  assert smap.shape == (1, 4, 3, 5)
  np.testing.assert_allclose(model(x), smap.mean(axis=(1, 2)), rtol=1e-6)


def test_too_small_input_is_a_clear_error():
  model = create_model("A", rngs=nnx.Rngs(0), width_mult=0.125, fc_width=32)
  with pytest.raises(ValueError, match="too small"):
    model(jnp.zeros((1, 160, 160, 3)))
  with pytest.raises(ValueError, match="NHWC"):
    model(jnp.zeros((1, 3, 224, 224)))


def test_unknown_name_lists_the_known_ones():
  with pytest.raises(ValueError, match="unknown model name 'F'.*'A-LRN'"):
    create_model("F", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="init scheme"):
    create_model("A", rngs=nnx.Rngs(0), init="xavier", width_mult=0.1)


def test_aliases_resolve_to_table_rows():
  assert net_spec("vgg16").name == "D"
  assert net_spec("vgg19_bn").name == "E-BN"
  assert net_spec("a_lrn").name == "A-LRN"


def _lrn_by_the_formula(a, k=2.0, n=5, alpha=1e-4, beta=0.75):
  """Krizhevsky's formula, one channel at a time, in float64."""
  a = np.asarray(a, np.float64)
  out = np.empty_like(a)
  num_ch = a.shape[-1]
  for i in range(num_ch):
    lo, hi = max(0, i - n // 2), min(num_ch - 1, i + n // 2)
    s = (a[..., lo:hi + 1] ** 2).sum(-1)
    out[..., i] = a[..., i] / (k + alpha * s) ** beta
  return out


def test_lrn_matches_krizhevsky_formula():
  # Values of the size ReLU outputs reach (up to ~200) so the alpha term
  # matters: a wrong alpha/n convention changes the result by percents.
  x = np.abs(np.random.default_rng(0).normal(0, 80, (2, 4, 3, 11)))
  got = np.asarray(local_response_norm(jnp.asarray(x, jnp.float32)))
  np.testing.assert_allclose(got, _lrn_by_the_formula(x), rtol=2e-5)
  caffe_style = _lrn_by_the_formula(x, alpha=1e-4 / 5)
  assert np.max(np.abs(got / caffe_style - 1)) > 0.05


def test_a_lrn_applies_lrn_after_first_conv_only():
  spec = net_spec("A-LRN")
  assert [c.name for c in spec.convs if c.lrn_after] == ["block1_conv1"]
  assert not any(c.lrn_after for c in net_spec("A").convs)
  alex = net_spec("alexnet")
  assert [c.name for c in alex.convs if c.lrn_after] == ["conv1", "conv2"]


def _kernel_std(model, name):
  return float(jnp.std(getattr(model, name).kernel[...]))


def test_init_schemes_have_their_variances():
  kw = dict(width_mult=0.5, fc_width=512, num_classes=100)
  paper = create_model("A", rngs=nnx.Rngs(0), init="paper", **kw)
  assert _kernel_std(paper, "block3_conv1") == pytest.approx(0.01, rel=0.02)
  assert _kernel_std(paper, "fc1") == pytest.approx(0.01, rel=0.02)
  assert float(jnp.abs(paper.fc1.bias[...]).max()) == 0.0

  he = create_model("A", rngs=nnx.Rngs(0), init="he", **kw)
  fan_in = 3 * 3 * 64  # block3_conv1: 3x3 over 64 (=128*0.5) channels
  assert _kernel_std(he, "block3_conv1") == pytest.approx(
      math.sqrt(2 / fan_in), rel=0.05)
  glorot = create_model("A", rngs=nnx.Rngs(0), init="glorot", **kw)
  # FC1 as a 7x7 conv has the fans of the dense layer it stands for.
  fin, fout = 7 * 7 * 256, 512
  assert _kernel_std(glorot, "fc1") == pytest.approx(
      math.sqrt(2 / (fin + fout)), rel=0.02)


def test_alexnet_init_biases():
  m = create_model("alexnet", rngs=nnx.Rngs(0), width_mult=0.25, fc_width=64)
  ones = {n for n in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc1",
                      "fc2", "fc3")
          if bool(jnp.all(getattr(m, n).bias[...] == 1.0))}
  assert ones == {"conv2", "conv4", "conv5", "fc1", "fc2"}
  assert _kernel_std(m, "conv3") == pytest.approx(0.01, rel=0.05)
  assert m(jnp.zeros((1, 224, 224, 3))).shape == (1, 1000)


def test_surgery_copies_four_convs_and_the_head_from_a():
  kw = dict(width_mult=0.125, fc_width=32, num_classes=10)
  a = create_model("A", rngs=nnx.Rngs(1), **kw)
  d = create_model("D", rngs=nnx.Rngs(2), **kw)
  before = {n: np.asarray(getattr(d, n).kernel[...]) for n in d.conv_names}
  copied = init_from_a(d, a)
  assert copied == ["block1_conv1", "block2_conv1", "block3_conv1",
                    "block3_conv2", "fc1", "fc2", "fc3"]
  for n in copied:
    np.testing.assert_array_equal(getattr(d, n).kernel[...],
                                  getattr(a, n).kernel[...])
  for n in set(d.conv_names) - set(copied):
    np.testing.assert_array_equal(getattr(d, n).kernel[...], before[n])
  other = create_model("D", rngs=nnx.Rngs(2), width_mult=0.25, fc_width=32,
                       num_classes=10)
  with pytest.raises(ValueError, match="same width_mult"):
    init_from_a(other, a)


def test_dropout_only_in_training():
  m = create_model("A", rngs=nnx.Rngs(0), width_mult=0.125, fc_width=64,
                   num_classes=10, init="glorot")
  x = jax.random.uniform(jax.random.key(0), (4, 224, 224, 3)) * 255
  np.testing.assert_array_equal(m(x), m(x))
  t1 = m(x, train=True, rngs=nnx.Rngs(dropout=1))
  t2 = m(x, train=True, rngs=nnx.Rngs(dropout=2))
  assert not np.allclose(t1, t2)
  # Half of FC1's and FC2's units are zeroed, and none elsewhere.
  h = m.penultimate(x, train=True, rngs=nnx.Rngs(dropout=3))
  h_eval = m.penultimate(x)
  live = np.asarray(h_eval) > 0
  dropped = np.mean(np.asarray(h)[live] == 0)
  assert 0.4 < dropped < 0.85  # FC2 sees FC1's dropout too


def test_bn_variant_uses_batch_statistics_in_training():
  m = create_model("A-BN", rngs=nnx.Rngs(0), width_mult=0.125, fc_width=32,
                   num_classes=10)
  x = jax.random.uniform(jax.random.key(0), (4, 224, 224, 3)) * 255
  before = np.asarray(m.block1_bn1.mean[...])
  m(x, train=True, rngs=nnx.Rngs(dropout=0))
  assert not np.allclose(before, m.block1_bn1.mean[...])


def test_bf16_compute_keeps_f32_params():
  m = create_model("A", rngs=nnx.Rngs(0), width_mult=0.125, fc_width=32,
                   num_classes=10, dtype=jnp.bfloat16, init="glorot")
  assert m.block1_conv1.kernel[...].dtype == jnp.float32
  assert m.features(jnp.zeros((1, 224, 224, 3))).dtype == jnp.bfloat16
  assert m(jnp.zeros((1, 224, 224, 3))).dtype == jnp.float32


@pytest.mark.slow
def test_full_size_d_single_forward():
  m = create_model("D", rngs=nnx.Rngs(0), init="glorot")
  x = jax.random.uniform(jax.random.key(0), (1, 224, 224, 3)) * 255 - 120
  y = m(x)
  assert y.shape == (1, 1000) and bool(jnp.all(jnp.isfinite(y)))
  assert param_count(m) == EXACT_PARAMS["D"]


def test_every_name_builds_abstractly():
  for name in MODEL_NAMES:
    m = abstract_model(name, num_classes=10)
    out = nnx.eval_shape(lambda m, x: m(x), m,
                         jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
    assert out.shape == (1, 10)


# One whole net, through the model's conv_impl plumbing (with LRN).  Every
# layer kind (3x3, C's 1x1, B-shallow's 5x5, AlexNet's 11x11/4) is checked
# layer by layer, for every schedule, in tests/test_conv_schedules.py: the
# three other whole nets cost 145 s of the suite.
@pytest.mark.parametrize("name,size", [("A-LRN", 64)])
def test_im2col_schedule_equals_lax_convolution(name, size):
  # Same weights built twice (same rngs), once per conv schedule: outputs and
  # gradients must agree to float tolerance on a dense-size input.
  kw = dict(width_mult=0.125, fc_width=32, num_classes=6, init="glorot",
            head_window=(1 if name != "alexnet" else 6))
  ref = create_model(name, rngs=nnx.Rngs(3), conv_impl="xla", **kw)
  fast = create_model(name, rngs=nnx.Rngs(3), conv_impl="im2col", **kw)
  x = jax.random.uniform(jax.random.key(4), (2, size + 32, size, 3)) * 255

  def loss(model):
    return jnp.sum(model.score_map(x) ** 2)

  # Jitted: one compilation per model instead of one per eager op.
  score_map = nnx.jit(lambda model: model.score_map(x))
  grad = nnx.jit(nnx.grad(loss))
  np.testing.assert_allclose(score_map(fast), score_map(ref),
                             rtol=1e-4, atol=1e-4)
  g_ref = grad(ref)
  g_fast = grad(fast)
  for a, b in zip(jax.tree_util.tree_leaves(g_ref),
                  jax.tree_util.tree_leaves(g_fast)):
    np.testing.assert_allclose(b, a, rtol=2e-3, atol=1e-3 * float(
        jnp.abs(a).max()))


def test_conv_impl_auto_picks_im2col_on_cpu():
  # With autotuning off, as the test session sets it (tests/conftest.py);
  # with it on, "auto" is "autotune" on CPUs (tests/test_conv_schedules.py).
  m = create_model("A", rngs=nnx.Rngs(0), width_mult=0.125, fc_width=16)
  assert m.conv_impl == ("im2col" if jax.default_backend() == "cpu"
                         else "xla")
  with pytest.raises(ValueError, match="conv_impl"):
    create_model("A", rngs=nnx.Rngs(0), conv_impl="fft")


@pytest.mark.parametrize("shape", [(2, 9, 7, 3), (1, 16, 12, 5)])
def test_reshape_max_pool_equals_reduce_window(shape):
  from vgg_jax.models.vgg import max_pool
  x = jax.random.normal(jax.random.key(0), shape)  # no ties
  ref = lambda x: nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
  np.testing.assert_array_equal(max_pool(x, 2, 2), ref(x))
  g = jax.grad(lambda x: jnp.sum(jnp.sin(max_pool(x, 2, 2))))(x)
  g_ref = jax.grad(lambda x: jnp.sum(jnp.sin(ref(x))))(x)
  np.testing.assert_allclose(g, g_ref, rtol=1e-6)
  # Overlapping pools (AlexNet) keep reduce_window.
  np.testing.assert_array_equal(
      max_pool(x, 3, 2),
      nnx.max_pool(x, (3, 3), strides=(2, 2), padding="VALID"))
