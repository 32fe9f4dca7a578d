"""The convolution schedules (models/conv.py) and their autotuning
(models/conv_autotune.py): every schedule is lax's convolution, forward and
both gradients; the choice cache is keyed, atomic, and survives corruption.

Timing runs only where a test forces it, on tiny shapes (the test session
sets VGG_JAX_CONV_AUTOTUNE=0 and a throwaway cache folder: tests/conftest.py).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vgg_jax.models import conv as conv_lib
from vgg_jax.models import conv_autotune, create_model

DN = ("NHWC", "HWIO", "NHWC")

# (input NHWC, kernel HWIO, strides, padding): VGG's 3x3 SAME; a strided,
# asymmetric explicit pad; AlexNet's 11x11/4 VALID; a 1x1; the FC1-as-conv
# window (7x7 VALID on a 7x7 map); a non-square input with stride (2, 1).
# (Winograd runs on the 3x3 stride-1 ones, odd sides padded to its 2x2
# tiles; the others fall back to im2col.)
CASES = [
    ((2, 9, 7, 3), (3, 3, 3, 5), (1, 1), "SAME"),
    ((1, 10, 11, 4), (3, 3, 4, 6), (2, 2), ((1, 0), (2, 1))),
    ((1, 27, 27, 3), (11, 11, 3, 4), (4, 4), "VALID"),
    ((2, 5, 6, 7), (1, 1, 7, 3), (1, 1), "VALID"),
    ((3, 7, 7, 8), (7, 7, 8, 5), (1, 1), "VALID"),
    ((1, 8, 12, 2), (3, 2, 2, 3), (2, 1), ((1, 1), (0, 1))),
    # Even sides, more channels: Winograd's tiles cover the map exactly.
    ((2, 6, 8, 32), (3, 3, 32, 16), (1, 1), "SAME"),
    # The shallow control's 5x5 SAME (paper §4.1, net B-shallow).
    ((1, 9, 8, 4), (5, 5, 4, 6), (1, 1), "SAME"),
]


def _conv_and_grads(fn, x, w, strides, padding, g):
  y, vjp = jax.vjp(lambda x, w: fn(x, w, strides, padding,
                                   dimension_numbers=DN), x, w)
  return (y, *vjp(g))


@pytest.mark.parametrize("name", conv_lib.SCHEDULES)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_schedule_equals_lax_forward_and_gradients(name, case):
  lhs, rhs, strides, padding = CASES[case]
  kx, kw, kg = jax.random.split(jax.random.key(case), 3)
  x = jax.random.normal(kx, lhs)
  w = jax.random.normal(kw, rhs)
  ref_y = jax.lax.conv_general_dilated(x, w, strides, padding,
                                       dimension_numbers=DN)
  g = jax.random.normal(kg, ref_y.shape)
  # The reference is lax's convolution and autodiff through it; the
  # schedules compute the same sums as matrix products of shifted views.
  ref = jax.jit(lambda x, w, g: _conv_and_grads(
      jax.lax.conv_general_dilated, x, w, strides, padding, g))(x, w, g)
  got = jax.jit(lambda x, w, g: _conv_and_grads(
      conv_lib.schedule(name), x, w, strides, padding, g))(x, w, g)
  for what, a, b in zip(("output", "input grad", "kernel grad"), ref, got):
    assert a.shape == b.shape, what
    np.testing.assert_allclose(b, a, rtol=1e-4,
                               atol=1e-4 * float(jnp.abs(a).max()),
                               err_msg=f"{name}: {what}")


def test_output_matches_a_hand_written_sum():
  # Independent of lax: the 3x3 SAME convolution as an explicit loop.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 4, 5, 2)).astype(np.float32)
  w = rng.normal(size=(3, 3, 2, 3)).astype(np.float32)
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = np.zeros((1, 4, 5, 3), np.float32)
  for r in range(4):
    for c in range(5):
      want[0, r, c] = np.einsum("ijc,ijco->o", xp[0, r:r + 3, c:c + 3], w)
  for name in conv_lib.SCHEDULES:
    got = conv_lib.schedule(name)(x, w, (1, 1), "SAME", dimension_numbers=DN)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5,
                               err_msg=name)


@pytest.mark.parametrize("kwargs", [dict(feature_group_count=2),
                                    dict(rhs_dilation=(2, 2))])
def test_unsupported_convolutions_go_to_lax(kwargs):
  x = jax.random.normal(jax.random.key(0), (1, 8, 8, 4))
  w = jax.random.normal(jax.random.key(1), (
      3, 3, 4 // kwargs.get("feature_group_count", 1), 6))
  ref = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=DN, **kwargs)
  for fn in [conv_lib.schedule(n) for n in conv_lib.SCHEDULES] + [
      conv_autotune.conv_general_dilated]:
    np.testing.assert_allclose(fn(x, w, (1, 1), "SAME", dimension_numbers=DN,
                                  **kwargs), ref, rtol=1e-5, atol=1e-5)


def test_resolve_conv_impl(monkeypatch):
  on_cpu = jax.default_backend() == "cpu"
  monkeypatch.setenv(conv_lib.AUTOTUNE_ENV, "0")
  assert conv_lib.resolve_conv_impl("auto") == ("im2col" if on_cpu else "xla")
  monkeypatch.setenv(conv_lib.AUTOTUNE_ENV, "1")
  assert conv_lib.resolve_conv_impl("auto") == ("autotune" if on_cpu
                                                else "xla")
  # Old values keep their meaning.
  for name in ("xla", "im2col", "autotune"):
    assert conv_lib.resolve_conv_impl(name) == name
  monkeypatch.setenv(conv_lib.AUTOTUNE_ENV, "maybe")
  with pytest.raises(ValueError, match="VGG_JAX_CONV_AUTOTUNE"):
    conv_lib.resolve_conv_impl("auto")
  with pytest.raises(ValueError, match="conv_impl must be one of"):
    conv_lib.resolve_conv_impl("fft")


def test_tuning_batch_by_hand():
  # 224x224, 64 -> 64, 3x3 SAME: 6 * 224*224 * 9*64*64 = 11.1e9 per image.
  assert conv_autotune.tuning_batch((8, 224, 224, 64), (3, 3, 64, 64),
                                    (1, 1), ((1, 1), (1, 1)), 3e9) == 1
  # 14x14, 512 -> 512: 6 * 196 * 9*512*512 = 2.77e9 per image -> 2 images.
  assert conv_autotune.tuning_batch((8, 14, 14, 512), (3, 3, 512, 512),
                                    (1, 1), ((1, 1), (1, 1)), 3e9) == 2
  # Never more than the layer's own batch.
  assert conv_autotune.tuning_batch((4, 4, 4, 2), (3, 3, 2, 2), (1, 1),
                                    ((1, 1), (1, 1)), 3e9) == 4


def test_summary_picks_the_fastest_median_and_prefers_earlier_on_ties():
  times = {"im2col": [1.0, 9.0, 1.0], "xla": [0.5, 0.6, 0.4],
           "taps": [0.45, 0.5, 0.55]}
  s = conv_autotune.summarise(times)
  # Medians: im2col 1.0, xla 0.5, taps 0.5: the tie goes to xla (earlier).
  assert s["choice"] == "xla"
  assert s["relative_to_im2col"] == {"im2col": 1.0, "xla": 0.5, "taps": 0.5}
  times["taps"] = [0.3, 0.3, 0.3]
  assert conv_autotune.summarise(times)["choice"] == "taps"


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
  monkeypatch.setenv(conv_autotune.CACHE_DIR_ENV, str(tmp_path))
  # One short round when a test does time (tiny shapes only).
  monkeypatch.setattr(conv_autotune, "ROUNDS", 1)
  monkeypatch.setattr(conv_autotune, "MIN_TIMING_S", 0.0)
  conv_autotune.clear_memo()
  yield tmp_path
  conv_autotune.clear_memo()


@pytest.fixture
def rigged_timing(monkeypatch):
  """Timings that make each new shape's winner the next schedule in turn,
  so that a model gets every schedule somewhere (no real timing)."""
  winners = []

  def fake(lhs_shape, rhs_shape, strides, pads, dtype, *args):
    candidates = args[3] if len(args) > 3 else conv_lib.SCHEDULES
    win = candidates[len(winners) % len(candidates)]
    winners.append(win)
    return {n: [1.0 if n == win else 2.0] for n in candidates}
  monkeypatch.setattr(conv_autotune, "time_schedules", fake)
  return winners


TINY = dict(lhs_shape=(2, 6, 6, 3), rhs_shape=(3, 3, 3, 4), strides=(1, 1),
            pads=((1, 1), (1, 1)), dtype=jnp.float32)


def test_autotune_times_once_then_reads_the_cache(cache_dir, monkeypatch):
  choice = conv_autotune.choose(**TINY)
  assert choice in conv_lib.SCHEDULES
  path = conv_autotune.cache_path()
  assert path.parent == cache_dir and path.exists()
  data = json.loads(path.read_text())
  assert data["machine"] == conv_autotune.machine_key()
  (key, entry), = data["entries"].items()
  assert key.startswith("w3x3x3x4:float32|x:float32|s1,1|p1,1,1,1|")
  assert entry["tuned_batch"] == 2 and entry["tuned_input"] == [6, 6, 3]
  assert entry["choice"] == choice
  assert set(entry["relative_to_im2col"]) <= set(conv_lib.SCHEDULES)
  assert entry["relative_to_im2col"]["im2col"] == 1.0
  assert not [p for p in cache_dir.iterdir() if p.suffix == ".tmp"]

  # A new process (memo cleared) reads the file and times nothing.
  conv_autotune.clear_memo()

  def no_timing(*a, **k):
    raise AssertionError("timed although the cache had the shape")
  monkeypatch.setattr(conv_autotune, "time_schedules", no_timing)
  assert conv_autotune.choose(**TINY) == choice
  assert conv_autotune.decisions()[key]["source"] == "cache"
  # A nearby image size shares the key (half-octaves of pixels: 6x6 and
  # 5x7 outputs); other widths, or sizes an octave away, are timed.
  assert conv_autotune.choose(**dict(TINY, lhs_shape=(2, 5, 7, 3))) == choice
  for other in (dict(rhs_shape=(3, 3, 3, 5)), dict(lhs_shape=(2, 12, 6, 3)),
                dict(lhs_shape=(1, 6, 6, 3))):
    with pytest.raises(AssertionError, match="timed although"):
      conv_autotune.choose(**dict(TINY, **other))


def test_a_cached_choice_is_what_runs(cache_dir, monkeypatch):
  # Whatever the cache says for this shape is the schedule traced.
  monkeypatch.setattr(conv_autotune, "time_schedules",
                      lambda *a, **k: {"taps": [1.0], "im2col": [2.0]})
  assert conv_autotune.choose(**TINY) == "taps"
  used = []
  real = conv_lib.schedule
  monkeypatch.setattr(conv_lib, "schedule",
                      lambda name: used.append(name) or real(name))
  x = jnp.ones(TINY["lhs_shape"])
  w = jnp.ones(TINY["rhs_shape"])
  y = conv_autotune.conv_general_dilated(x, w, (1, 1), "SAME",
                                         dimension_numbers=DN)
  assert used == ["taps"]
  np.testing.assert_allclose(y, jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=DN), rtol=1e-6)


@pytest.mark.parametrize("content", [
    "{not json", json.dumps([1, 2]),
    json.dumps({"format": 1, "machine": {"cpu": "another"}, "entries": {}}),
    None])  # None: this machine's file naming a schedule that does not exist
def test_a_bad_cache_is_ignored_with_a_warning_and_rewritten(
    cache_dir, rigged_timing, content):
  path = conv_autotune.cache_path()
  if content is None:
    content = json.dumps({"format": 1, "machine": conv_autotune.machine_key(),
                          "entries": {"k": {"choice": "fft"}}})
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(content)
  with pytest.warns(RuntimeWarning, match="ignoring the convolution-schedule"):
    choice = conv_autotune.choose(**TINY)
  data = json.loads(path.read_text())  # a good file again
  assert [e["choice"] for e in data["entries"].values()] == [choice]


def test_store_keeps_other_entries(cache_dir):
  machine = conv_autotune.machine_key()
  path = conv_autotune.cache_path(machine)
  conv_autotune.store(path, machine, "a", {"choice": "xla"})
  conv_autotune.store(path, machine, "b", {"choice": "rows"})
  assert conv_autotune.load_cache(path, machine) == {
      "a": {"choice": "xla"}, "b": {"choice": "rows"}}
  # The key names the machine: another machine key, another file.
  other = dict(machine, jax="0.0.1")
  assert conv_autotune.cache_path(other) != path
  assert sorted(os.listdir(cache_dir)) == [path.name]


def test_autotuned_model_equals_the_lax_model(cache_dir, rigged_timing):
  # Every schedule wins somewhere in the net: the numbers are lax's.
  kw = dict(width_mult=0.0625, fc_width=16, num_classes=4, init="glorot",
            head_window=1)
  ref = create_model("A", rngs=nnx.Rngs(1), conv_impl="xla", **kw)
  tuned = create_model("A", rngs=nnx.Rngs(1), conv_impl="autotune", **kw)
  assert tuned.conv_impl == "autotune"
  x = jax.random.uniform(jax.random.key(2), (2, 32, 32, 3)) * 255

  def loss(model):
    return jnp.sum(model(x) ** 2)
  np.testing.assert_allclose(nnx.jit(lambda m: m(x))(tuned),
                             nnx.jit(lambda m: m(x))(ref), rtol=1e-4,
                             atol=1e-4)
  g_ref, g_tuned = nnx.jit(nnx.grad(loss))(ref), nnx.jit(nnx.grad(loss))(tuned)
  for a, b in zip(jax.tree_util.tree_leaves(g_ref),
                  jax.tree_util.tree_leaves(g_tuned)):
    np.testing.assert_allclose(b, a, rtol=2e-3,
                               atol=1e-3 * float(jnp.abs(a).max()))
  # A's 3x3 convs at width 1/16 and 32px: 3->4 at 32, 4->8 at 16, 8->16
  # and 16->16 at 8, 16->32 and 32->32 at 4, 32->32 at 2: 7 shapes (the 1x1
  # head is a plain product, not tuned).
  made = conv_autotune.decisions()
  assert len(made) == 7 == len(rigged_timing)
  assert sorted(d["choice"] for d in made.values()) == sorted(rigged_timing)
  assert set(rigged_timing) == set(conv_lib.SCHEDULES)
