"""vgg_jax.aot: the training step compiled for a TPU topology, without a TPU.

The compiling tests run ``python -m vgg_jax.aot`` in a subprocess (libtpu is
kept out of this process: with it importable JAX would try to start a TPU)
on the Fashion-MNIST net (width-reduced A, 32x32 grey) and a 4-chip v5e.
They are skipped when libtpu is not installed (./setup.sh installs it in
.libtpu/).  The sweep's bisection, the HLO collective parser and the
roofline are checked without compiling.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

from vgg_jax import aot, input_pipeline, pods, train
from vgg_jax.models import count_params, net_spec

ROOT = pathlib.Path(__file__).resolve().parent.parent
HAVE_LIBTPU = (pods.libtpu_dir() is not None or
               importlib.util.find_spec("libtpu") is not None)
needs_libtpu = pytest.mark.skipif(
    not HAVE_LIBTPU, reason="libtpu is not installed (./setup.sh puts it in "
    ".libtpu/; or pip install -e '.[tpu-aot]'): cannot compile for TPU")
# The plain net A at 32x32, batch 128: the hand counts below are its.
CONFIG = str(ROOT / "experiments" / "fashion_mnist_net_a.py")


def run_aot(tmp_path, *args, name="r.json"):
  out = tmp_path / name
  # Without the test session's compilation cache (tests/conftest.py): no TPU
  # program is compiled twice here, and a TPU executable compiled without a
  # TPU is not one to serialise.
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("TPU_", "JAX_PLATFORMS", "XLA_FLAGS",
                              "JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
  env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
  p = subprocess.run(
      [sys.executable, "-m", "vgg_jax.aot", "--config", CONFIG,
       "--output", str(out), *args], capture_output=True, text=True,
      env=env, cwd=tmp_path, timeout=900)
  return p, (json.loads(out.read_text()) if out.is_file() else None)


def fashion_net_params() -> tuple[int, int]:
  """(all parameters, FC1+FC2 kernel parameters) of the Fashion-MNIST net,
  counted from its layer table by hand (3x3 convs, 1x1 head window)."""
  spec = net_spec("A", width_mult=0.1875, fc_width=512, head_window=1)
  c_in, n = 1, 0
  for c in spec.convs:
    n += c.kernel * c.kernel * c_in * c.features + c.features
    c_in = c.features
  fc1 = c_in * 512
  fc2 = 512 * 512
  n += fc1 + 512 + fc2 + 512 + 512 * 10 + 10
  assert n == count_params(spec, in_channels=1, num_classes=10)
  return n, fc1 + fc2


@pytest.fixture(scope="module")
def data_parallel(tmp_path_factory):
  if not HAVE_LIBTPU:
    pytest.skip("libtpu is not installed")
  # The config pins the im2col its CPU numbers were measured with; "auto"
  # is what a user compiling for a pod leaves it at.
  return run_aot(tmp_path_factory.mktemp("aot"), "--topology", "v5e:2x2",
                 "--config.model.conv_impl=auto")


@needs_libtpu
def test_report_memory_flops_collectives(data_parallel):
  p, r = data_parallel
  assert p.returncode == 0, p.stderr[-3000:]
  # libtpu's warnings about the missing TPU stay out of the user's output.
  for noise in ("TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES",
                "InitGoogle", "metadata"):
    assert noise not in p.stdout + p.stderr, (p.stdout + p.stderr)[-2000:]
  assert "fits" in p.stdout
  assert r["chips"] == 4 and r["device_kind"].startswith("TPU v5")
  assert r["mesh"] == {"data": 4, "model": 1}
  assert r["global_batch"] == 128 and r["batch_per_chip"] == 32
  assert r["conv_impl"] == "xla"  # what "auto" picks on a TPU
  m = r["memory_per_chip"]
  for f in aot.MEMORY_FIELDS:
    assert isinstance(m[f], int) and m[f] >= 0
  assert m["peak_bytes"] == (m["argument_size_in_bytes"] +
                             m["output_size_in_bytes"] -
                             m["alias_size_in_bytes"] +
                             m["temp_size_in_bytes"] +
                             m["generated_code_size_in_bytes"])
  assert m["hbm_bytes"] == 16 * 2 ** 30 and m["fits"] is True
  n_params, _ = fashion_net_params()
  # Replicated f32 parameters and momentum, and this chip's quarter of the
  # batch (32 images 32x32x1 f32 + int32 labels), counted by hand.
  batch_bytes = 32 * 32 * 32 * 4 + 32 * 4
  c = r["counted_bytes_per_chip"]
  assert c["params"] == 4 * n_params and c["optimizer"] >= 4 * n_params
  assert c["batch"] == batch_bytes
  # XLA's arguments hold all of them (TPU tiles pad, so >=, and < 2x).
  state_and_batch = 2 * 4 * n_params + batch_bytes
  assert state_and_batch <= m["argument_size_in_bytes"] < 2 * state_and_batch
  # Donation: the new state reuses the old state's buffers.
  assert m["alias_size_in_bytes"] >= 2 * 4 * n_params
  # The gradient all-reduce carries every parameter's gradient once (f32),
  # plus the few scalars of the loss and accuracy.
  ar = r["collectives_per_chip"]["all-reduce"]
  assert 4 * n_params <= ar["bytes"] <= 4 * n_params + 64
  assert ar["ici_bytes"] == pytest.approx(2 * 3 / 4 * ar["bytes"], rel=1e-6)
  # XLA's FLOPs are those of forward + backward: a little under 3x the
  # forward (the first conv needs no input gradient).
  fwd = r["model_flops_per_step"] / 3
  assert 2.2 * fwd < r["flops_per_step"] < 3.05 * fwd
  assert r["flops_per_step"] == pytest.approx(4 * r["flops_per_chip"])
  rf = r["roofline"]
  chip = pods.CHIPS["v5e"]
  assert rf["compute_s"] == pytest.approx(r["flops_per_chip"] /
                                          chip.bf16_flops_per_s)
  assert rf["step_time_s"] == max(rf["compute_s"], rf["hbm_s"], rf["ici_s"])
  assert rf["hbm_s"] == pytest.approx(
      (m["argument_size_in_bytes"] + m["output_size_in_bytes"] +
       2 * m["temp_size_in_bytes"]) / chip.hbm_bytes_per_s)
  assert rf["images_per_s"] == pytest.approx(128 / rf["step_time_s"])


@needs_libtpu
def test_fc_sharding_splits_fc_kernels(tmp_path, data_parallel):
  p, r = run_aot(tmp_path, "--topology", "v5e:2x2",
                 "--config.mesh_model_axis=2",
                 "--config.shard_fc_kernels=True")
  assert p.returncode == 0, p.stderr[-3000:]
  assert r["mesh"] == {"data": 2, "model": 2} and r["shard_fc_kernels"]
  assert r["batch_per_chip"] == 64
  n_params, n_fc = fashion_net_params()
  # FC1/FC2 kernels (and their momentum) are halved over the model axis.
  assert r["counted_bytes_per_chip"]["params"] == 4 * (n_params - n_fc // 2)
  dp = data_parallel[1]
  assert (r["counted_bytes_per_chip"]["optimizer"] ==
          dp["counted_bytes_per_chip"]["optimizer"] - 4 * n_fc // 2)
  assert r["memory_per_chip"]["argument_size_in_bytes"] < (
      dp["memory_per_chip"]["argument_size_in_bytes"] + 32 * 32 * 32 * 4)
  # Model parallelism needs more than the data-parallel all-reduce.
  assert set(r["collectives_per_chip"]) - {"all-reduce"}


@needs_libtpu
def test_refused_by_the_compiler_is_a_does_not_fit_report(tmp_path):
  """At 512K images per chip XLA's TPU compiler refuses the program (over
  the v5e's HBM): the command says by how much, writes the report and
  exits 3 (what the pod preflight stops on), instead of a traceback."""
  p, r = run_aot(tmp_path, "--topology", "v5e:2x2",
                 "--config.batch_size=2097152")
  assert p.returncode == 3, p.stderr[-2000:]
  assert "Traceback" not in p.stderr
  assert "DOES NOT FIT" in p.stdout
  m = r["memory_per_chip"]
  assert m["refused_by_compiler"] and not m["fits"]
  # The compiler's HBM is the chip's less a reserve; it needs far more.
  assert 0.9 * m["hbm_bytes"] < m["compiler_available_bytes"] <= m["hbm_bytes"]
  # The chip table's usable HBM (what `fits` compares a peak with) is what
  # this libtpu's compiler says it may use.
  assert m["compiler_available_bytes"] == pytest.approx(
      pods.CHIPS["v5e"].usable_hbm, rel=1e-3)
  assert m["usable_hbm_bytes"] == pods.CHIPS["v5e"].usable_hbm
  assert m["compiler_required_bytes"] > 4 * m["hbm_bytes"]
  # What is known without compiling is still reported: the batch alone.
  # float32 32x32 grey images and int32 labels
  assert r["counted_bytes_per_chip"]["batch"] == 524288 * (32 * 32 * 4 + 4)


def test_bad_input_is_a_clear_error(tmp_path):
  p, r = run_aot(tmp_path, "--topology", "v9z:4x4")
  assert p.returncode == 2 and r is None
  assert "unknown TPU generation 'v9z'" in p.stderr
  p, r = run_aot(tmp_path, "--topology", "v5e:four")
  assert p.returncode == 2 and "GENERATION:AxB" in p.stderr


@needs_libtpu
def test_batch_that_does_not_divide(tmp_path):
  p, r = run_aot(tmp_path, "--topology", "v5e:2x2",
                 "--config.batch_size=130")
  assert p.returncode == 2 and r is None
  assert "batch_size 130 is not divisible by the 4" in p.stderr


def test_topology_names():
  assert pods.canonical_topology("v5e-256") == "v5e:16x16"
  assert pods.canonical_topology("v5litepod:4x4") == "v5e:4x4"
  chip, dims = pods.parse_topology("v4:2x2x4")
  assert chip.generation == "v4" and dims == (2, 2, 4)
  assert chip.accelerator_type(16) == "v4-32"  # gcloud counts TensorCores
  assert pods.CHIPS["v5e"].accelerator_type(256) == "v5litepod-256"
  # gcloud's accelerator types, any size Cloud TPU sells: v5e/v6e count
  # chips, v4/v5p TensorCores (Cloud TPU docs' slice shapes).
  for acc, topo in [("v5litepod-16", "v5e:4x4"), ("v5litepod-1", "v5e:1x1"),
                    ("v5e-8", "v5e:2x4"), ("v6e-64", "v6e:8x8"),
                    ("v5p-8", "v5p:2x2x1"), ("v4-64", "v4:2x4x4"),
                    ("v5p-1024", "v5p:8x8x8"), ("trillium-4", "v6e:2x2")]:
    assert pods.canonical_topology(acc) == topo, acc
    chip, dims = pods.parse_topology(topo)
    assert chip.accelerator_type(math.prod(dims)).split("-")[1] == \
        acc.split("-")[1]
  assert pods.canonical_topology("v6e:2x2x1") == "v6e:2x2"
  assert pods.canonical_topology(" v4:2x2x1 ") == "v4:2x2x1"


@pytest.mark.parametrize("name,message", [
    ("v9z:4x4", "unknown TPU generation 'v9z'"),
    ("v5e:four", "GENERATION:AxB"),
    ("v5e", "GENERATION:AxB"),
    ("v5p-7", "2 per chip"),
    ("v5litepod-12", "not a v5e slice size"),
    ("v6e:2x2x2", "v6e slices are 2D"),
    ("v5e:0x4", "empty dimension"),
])
def test_topology_name_errors(name, message):
  with pytest.raises(ValueError, match=message):
    pods.parse_topology(name)


HLO = """
  %all-reduce.1 = f32[3,3,64,64]{3,2,1,0} all-reduce(f32[3,3,64,64]{3,2,1,0} %p), channel_id=1, replica_groups={{0,1,2,3}}, to_apply=%add
  %ars = bf16[1024]{0} all-reduce-start(bf16[1024]{0} %q), replica_groups=[2,4]<=[8], to_apply=%add
  %ard = bf16[1024]{0} all-reduce-done(bf16[1024]{0} %ars)
  %ag = f32[8,128]{1,0} all-gather(f32[4,128]{1,0} %x), replica_groups={{0,1}}, dimensions={0}
  %ags = (f32[2,128]{1,0}, f32[8,128]{1,0}) all-gather-start(f32[2,128]{1,0} %y), replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}, dimensions={0}
  %agd = f32[8,128]{1,0} all-gather-done((f32[2,128]{1,0}, f32[8,128]{1,0}) %ags)
  %fusion.3 = f32[8]{0} fusion(f32[8]{0} %all-reduce.1), kind=kLoop
"""


def test_collective_parser_hand_counted():
  c = aot.collectives(HLO, num_devices=8)
  ar = c["all-reduce"]
  assert ar["count"] == 2
  assert ar["bytes"] == 3 * 3 * 64 * 64 * 4 + 1024 * 2
  # Ring all-reduce: 2 (n-1)/n x size; groups of 4 both times.
  assert ar["ici_bytes"] == pytest.approx(1.5 * ar["bytes"])
  ag = c["all-gather"]
  # The sync gather over 2 devices sends half its result; the async one
  # over the 4 devices of mesh axis 1 sends 3/4 of its result (the larger
  # element of its (operand, result) tuple).
  assert ag == {"count": 2, "bytes": 2 * 8 * 128 * 4,
                "ici_bytes": 8 * 128 * 4 / 2 + 8 * 128 * 4 * 3 / 4}
  assert "reduce-scatter" not in c


def test_roofline_by_hand():
  chip = pods.Chip("x", 100e12, 2 ** 30, 1e12, 1e11, 1, "x", "test")
  r = aot.roofline(chip, flops=50e12, hbm_bytes=2e11, ici_bytes=1e10,
                   global_batch=64, xla_bytes_accessed=6e11)
  assert r["compute_s"] == pytest.approx(0.5) and r["hbm_s"] == 0.2
  assert r["ici_s"] == pytest.approx(0.1) and r["bound_by"] == "compute"
  assert r["images_per_s"] == pytest.approx(128)
  assert r["step_time_no_overlap_s"] == pytest.approx(0.5 + 0.1)
  assert r["hbm_xla_bytes_s"] == pytest.approx(0.6)
  r = aot.roofline(chip, flops=1e12, hbm_bytes=5e11, ici_bytes=0,
                   global_batch=8)
  assert r["bound_by"] == "hbm" and r["step_time_s"] == pytest.approx(0.5)


def test_sweep_bisection_finds_the_boundary(monkeypatch, tmp_path):
  """A fake compiler with a known, slightly convex memory curve: the sweep
  must return the largest fitting batch, found by brute force here."""
  import ml_collections
  # The HBM a program may use (the chip's less the runtime's reserve).
  hbm = pods.CHIPS["v5e"].usable_hbm

  def peak(global_batch):
    per_chip = global_batch // 16  # v5e:4x4, model axis 1
    return int(3e8 + 5.1e7 * per_chip + 2e4 * per_chip ** 2)

  calls = []

  def fake_compile(config, topology, batch, cache_dir, **kw):
    calls.append(batch)
    return {"memory_per_chip": {"peak_bytes": peak(batch),
                                "hbm_bytes": hbm,
                                "fits": peak(batch) <= hbm}}

  monkeypatch.setattr(aot, "compile_point", fake_compile)
  config = ml_collections.ConfigDict(dict(
      model=dict(name="D", dtype="bfloat16"), shard_fc_kernels=False,
      mesh_model_axis=1))
  r = aot.sweep(config, "v5e:4x4", tmp_path, step_per_chip=8,
                log=lambda s: None)
  best = max(b for b in range(8, 8193, 8) if peak(16 * b) <= hbm)
  assert r["max_batch_per_chip"] == best
  assert r["max_global_batch"] == 16 * best
  assert r["first_failing_global_batch"] == 16 * (best + 8)
  assert len(calls) <= 10  # not a linear scan


def _fake_compiler(monkeypatch, limit, wrong=()):
  """A compiler that fits up to ``limit`` per chip (v5e:4x4, 16 chips), and
  a probe that agrees except at ``wrong`` (it passes them, as a
  probe whose compiler is slow to refuse would)."""
  hbm = pods.CHIPS["v5e"].hbm_bytes
  calls = {"full": [], "probe": []}

  def fake_compile(config, topology, batch, cache_dir, **kw):
    calls["full"].append(batch // 16)
    fits = batch // 16 <= limit
    return {"memory_per_chip": {"peak_bytes": hbm // 2 if fits else None,
                                "refused_by_compiler": not fits,
                                "hbm_bytes": hbm, "fits": fits}}

  def fake_probe(config, topology, batch, cache_dir, *, probe_s, **kw):
    calls["probe"].append(batch // 16)
    return batch // 16 <= limit or batch // 16 in wrong

  monkeypatch.setattr(aot, "compile_point", fake_compile)
  monkeypatch.setattr(aot, "probe_point", fake_probe)
  return calls


def _sweep_config():
  import ml_collections
  return ml_collections.ConfigDict(dict(
      model=dict(name="D", dtype="bfloat16"), shard_fc_kernels=False,
      mesh_model_axis=1))


@pytest.mark.parametrize("limit,wrong", [(384, ()), (896, (904, 960)),
                                         (8, ()), (1000, (1008,))])
def test_probe_sweep_compiles_only_its_answer(monkeypatch, tmp_path, limit,
                                              wrong):
  """Probes bracket and bisect; the answer is compiled in full, and a probe
  that passed wrongly is caught by that compile: the result is exact."""
  calls = _fake_compiler(monkeypatch, limit, wrong)
  r = aot.sweep(_sweep_config(), "v5e:4x4", tmp_path, step_per_chip=8,
                probe_s=30, log=lambda s: None)
  assert r["max_batch_per_chip"] == limit // 8 * 8
  assert r["first_failing_global_batch"] == 16 * (limit // 8 * 8 + 8)
  assert r["at_max"]["memory_per_chip"]["fits"]
  # The one full compile that fits (minutes, not seconds) is the answer;
  # the others are refusals (seconds), among them the probes' wrong passes
  # caught (a fully compiled failure is as certain as a refusal).
  assert [x for x in calls["full"] if x <= limit] == [limit // 8 * 8]
  assert set(wrong) <= set(calls["full"])
  assert len(calls["probe"]) <= 16


def test_sweep_stops_probing_when_the_compiler_does_not_refuse(
    monkeypatch, tmp_path):
  """On v5p XLA compiles batches far over the HBM without refusing (their
  peak says no): every probe passes.  The first full compile that does not
  fit switches the sweep to full compiles, bisected (not a step-by-step
  descent), and the answer is still exact."""
  calls = _fake_compiler(monkeypatch, 1536, wrong=range(1544, 2900, 8))
  r = aot.sweep(_sweep_config(), "v5e:4x4", tmp_path, step_per_chip=8,
                probe_s=30, log=lambda s: None)
  assert r["max_batch_per_chip"] == 1536
  assert r["first_failing_global_batch"] == 16 * 1544
  assert len(calls["full"]) <= 12, calls


def test_sweep_with_a_right_guess_is_two_compiles(monkeypatch, tmp_path):
  """A guess from a neighbouring cell (E's limit for D) that is right costs
  one probe above it and one full compile of it."""
  calls = _fake_compiler(monkeypatch, 384)
  r = aot.sweep(_sweep_config(), "v5e:4x4", tmp_path, step_per_chip=8,
                probe_s=30, guess_per_chip=384, log=lambda s: None)
  assert r["max_batch_per_chip"] == 384
  assert calls == {"probe": [392], "full": [384]}
  calls = _fake_compiler(monkeypatch, 200)  # a wrong guess still converges
  r = aot.sweep(_sweep_config(), "v5e:4x4", tmp_path, step_per_chip=8,
                probe_s=30, guess_per_chip=384, log=lambda s: None)
  assert r["max_batch_per_chip"] == 200
  assert [x for x in calls["full"] if x <= 200] == [200]


@pytest.mark.parametrize("probe_s", [None, 30])
def test_sweep_climbs_to_another_cells_answer_over_a_non_monotone_gap(
    monkeypatch, tmp_path, probe_s):
  """v5p's compiler fits D in f32 at 872 per chip, not at 880..1400, and
  again at 1,408 (XLA's peak is not monotone in the batch).  Bisection alone
  stops at 872; another cell's answer above it is compiled in full, and the
  search moves there.  A candidate that does not fit changes nothing."""
  fits = lambda x: x <= 872 or x == 1408  # noqa: E731
  hbm = pods.CHIPS["v5e"].hbm_bytes
  calls = {"full": [], "probe": []}

  def fake_compile(config, topology, batch, cache_dir, **kw):
    calls["full"].append(batch // 16)
    return {"memory_per_chip": {
        "peak_bytes": hbm // 2 if fits(batch // 16) else 2 * hbm,
        "hbm_bytes": hbm, "fits": fits(batch // 16)}}

  def fake_probe(config, topology, batch, cache_dir, *, probe_s, **kw):
    calls["probe"].append(batch // 16)
    return True  # v5p: the compiler never refuses, every probe passes

  monkeypatch.setattr(aot, "compile_point", fake_compile)
  monkeypatch.setattr(aot, "probe_point", fake_probe)
  run = lambda c, d: aot.sweep(  # noqa: E731
      _sweep_config(), "v5e:4x4", d, step_per_chip=8, probe_s=probe_s,
      guess_per_chip=872, candidates_per_chip=c, log=lambda s: None)
  r = run((), tmp_path / "alone")
  assert (r["max_batch_per_chip"], r["failing_below_max"]) == (872, [])
  assert r["first_failing_global_batch"] == 16 * 880
  r = run((1000, 1408, 2000), tmp_path / "helped")
  assert r["max_batch_per_chip"] == 1408
  assert r["first_failing_global_batch"] == 16 * 1416
  assert 16 * 880 in r["failing_below_max"]
  assert r["at_max"]["memory_per_chip"]["fits"]
  # Largest candidate first; 1000 lies under the new answer: not compiled.
  assert 1000 not in calls["full"] and 2000 in calls["full"]
  r = run((1000,), tmp_path / "wrong")
  assert r["max_batch_per_chip"] == 872


def test_sweep_resumes_from_the_cache(monkeypatch, tmp_path):
  """Points already in the cache (full compiles, probes) bracket the
  search: a resumed sweep compiles only inside the bracket."""
  calls = _fake_compiler(monkeypatch, 400)
  config = _sweep_config()
  for per_chip, fits in ((8, True), (384, True), (512, False)):
    aot.write_json(tmp_path / (aot.point_key(config, "v5e:4x4", 16 * per_chip)
                               + ".json"),
                   {"memory_per_chip": {"fits": fits}})
  aot.write_json(tmp_path / "probes" / (aot.point_key(
      config, "v5e:4x4", 16 * 392) + ".json"), {"passed": True})
  r = aot.sweep(config, "v5e:4x4", tmp_path, step_per_chip=8, probe_s=30,
                log=lambda s: None)
  assert r["max_batch_per_chip"] == 400
  assert all(392 < x < 512 for x in calls["probe"] + calls["full"]), calls
  assert [x for x in calls["full"] if x <= 400] == [400]


@needs_libtpu
def test_probe_point_refusal_and_pass(tmp_path, monkeypatch):
  """The real probe: a batch XLA refuses comes back as a cached full point
  (refused); one that compiles longer than ``probe_s`` (0 here) is stopped
  and recorded as passed under probes/, never as a full point."""
  config = aot.load_experiment(CONFIG)
  for k in list(os.environ):  # the child's environment, as run_aot's
    if k.startswith(("TPU_", "JAX_PLATFORMS", "XLA_FLAGS",
                     "JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE")):
      monkeypatch.delenv(k)
  assert not aot.probe_point(config, "v5e:2x2", 2097152, tmp_path,
                             probe_s=120)
  full = json.loads((tmp_path / (aot.point_key(
      config, "v5e:2x2", 2097152) + ".json")).read_text())
  assert full["memory_per_chip"]["refused_by_compiler"]
  assert aot.probe_point(config, "v5e:2x2", 128, tmp_path, probe_s=0)
  key = aot.point_key(config, "v5e:2x2", 128)
  assert not (tmp_path / (key + ".json")).exists()
  assert json.loads((tmp_path / "probes" / (key + ".json")).read_text())[
      "passed"]


@pytest.mark.parametrize("child, says", [
    ("import time; time.sleep(60)", "not compiling 1 s after starting"),
    ("import sys; sys.exit('lowering failed: no such mesh')",
     "exit 1): lowering failed: no such mesh"),
])
def test_probe_point_that_never_compiles_is_an_error(tmp_path, monkeypatch,
                                                     child, says):
  """A probe child stuck before compiling (it never says so) is stopped
  after the setup limit, and one that dies first reports its error: neither
  counts as a pass, and nothing is cached."""
  monkeypatch.setattr(aot, "_PROBE_CHILD", child)
  monkeypatch.setattr(aot, "_PROBE_SETUP_S", 1.0)
  t0 = time.perf_counter()
  with pytest.raises(RuntimeError, match=re.escape(says)):
    aot.probe_point(aot.load_experiment(CONFIG), "v5e:2x2", 128, tmp_path,
                    probe_s=0)
  assert time.perf_counter() - t0 < 30
  assert not list(tmp_path.rglob("*.json"))


REFUSAL = ("jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: Ran out of "
           "memory on HBM, the total memory required for HLO temporaries "
           "(37.96G) exceeds available HBM (30.75G).")


def test_compiler_refusal_is_read_as_does_not_fit():
  """XLA's TPU compiler refuses a program over the HBM (seen for E at 1,120
  per chip on v4-32): that is the answer 'does not fit', with its sizes."""
  chip = pods.CHIPS["v4"]
  m = aot.compiler_refusal(REFUSAL, chip)
  assert m["fits"] is False and m["refused_by_compiler"] is True
  assert m["compiler_required"] == "HLO temporaries"
  assert m["compiler_required_bytes"] == int(37.96 * 2**30)
  assert m["compiler_available_bytes"] == int(30.75 * 2**30)
  assert m["hbm_bytes"] == 32 * 2**30 and m["peak_bytes"] is None
  assert all(m[f] is None for f in aot.MEMORY_FIELDS)
  # Any other compile error is not an answer about memory.
  assert aot.compiler_refusal("INVALID_ARGUMENT: bad sharding", chip) is None


def test_sweep_and_table_take_refused_points(monkeypatch, tmp_path):
  """Above some batch the fake compiler refuses (no memory analysis at
  all), as XLA's does: the sweep still brackets the boundary, and the
  table built from the cache shows it."""
  import dataclasses
  import ml_collections
  bench = ROOT / "benchmarks" / "aot_sweep.py"
  spec = importlib.util.spec_from_file_location("aot_sweep_bench", bench)
  aot_sweep = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(aot_sweep)
  chip = pods.CHIPS["v4"]

  def peak(per_chip):
    return int(2e9 + 4e7 * per_chip)

  def fake_analyze(config, topology, **kw):
    b = int(config.batch_size)
    per_chip = b // 16
    r = {"model": {"name": "E"}, "topology": topology, "dtype": "bfloat16",
         "shard_fc_kernels": False, "mesh": {"data": 16, "model": 1},
         "global_batch": b, "batch_per_chip": per_chip, "chips": 16,
         "chip": dataclasses.asdict(chip)}
    if peak(per_chip) > 1.2 * chip.usable_hbm:
      r["memory_per_chip"] = aot.compiler_refusal(REFUSAL, chip)
      return r
    m = {f: 0 for f in aot.MEMORY_FIELDS}
    m.update(temp_size_in_bytes=peak(per_chip), peak_bytes=peak(per_chip),
             hbm_bytes=chip.hbm_bytes, fits=peak(per_chip) <= chip.hbm_bytes)  # stale: recomputed
    r.update(memory_per_chip=m, flops_per_chip=1e12,
             collectives_per_chip={})
    return r

  monkeypatch.setattr(aot, "analyze", fake_analyze)
  config = ml_collections.ConfigDict(dict(
      model=dict(name="E", dtype="bfloat16"), shard_fc_kernels=False,
      mesh_model_axis=1, batch_size=256))
  r = aot.sweep(config, "v4:2x2x4", tmp_path, step_per_chip=8,
                start_per_chip=512, log=lambda s: None)
  best = max(b for b in range(8, 8193, 8) if peak(b) <= chip.usable_hbm)
  assert r["max_batch_per_chip"] == best
  assert r["first_failing_global_batch"] == 16 * (best + 8)
  cached = [json.loads(f.read_text()) for f in tmp_path.glob("*.json")]
  assert any(x["memory_per_chip"].get("refused_by_compiler")
             for x in cached)
  table = aot_sweep.cache_table(tmp_path)
  row = [l for l in table.splitlines() if l.startswith("| E |")]
  assert len(row) == 1 and "exact (next step does not fit)" in row[0]
  assert f"{16 * best} ({best})" in row[0]


def test_sweep_point_cache_is_reused(monkeypatch, tmp_path):
  """A cached point is read back, not compiled again (the sweep resumes)."""
  import ml_collections
  config = ml_collections.ConfigDict(dict(
      model=dict(name="D", dtype="bfloat16"), shard_fc_kernels=False,
      mesh_model_axis=1, batch_size=256))
  path = tmp_path / (aot.point_key(config, "v5e:4x4", 128) + ".json")
  aot.write_json(path, {"memory_per_chip": {"fits": True}})
  monkeypatch.setattr(aot, "analyze", lambda *a, **k: pytest.fail(
      "compiled a cached point"))
  assert aot.compile_point(config, "v5e:4x4", 128, tmp_path) == {
      "memory_per_chip": {"fits": True}}
  assert not list(tmp_path.glob("*.tmp"))
  assert math.isclose(pods.CHIPS["v6e"].ici_bytes_per_s, 448e9)


@needs_libtpu
def test_topology_devices_one_per_chip():
  """v4 and v5p are compiled as training sees them: one device per chip
  (megacore), not one per TensorCore."""
  code = ("from vgg_jax import pods; pods.prepare_aot_environment()\n"
          "from vgg_jax import aot\n"
          "for t in ('v4:2x2x1', 'v5p:2x2x2', 'v5e:2x4', 'v6e:2x2',\n"
          "          'v5litepod-1', 'v5p-8', 'v6e:1x1'):\n"
          "  d = aot.topology_devices(t)\n"
          "  print(t, len(d), len({tuple(x.coords) for x in d}))\n"
          "try:\n"
          "  aot.topology_devices('v5e:3x3')\n"
          "except ValueError as e:\n"
          "  print('v5e:3x3', str(e).replace(' ', '_'))\n")
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("TPU_", "JAX_PLATFORMS"))}
  env["PYTHONPATH"] = str(ROOT)
  p = subprocess.run([sys.executable, "-c", code], capture_output=True,
                     text=True, env=env, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  lines = dict(line.split(maxsplit=1) for line in p.stdout.splitlines())
  error = lines.pop("v5e:3x3")
  counts = {t: tuple(map(int, v.split())) for t, v in lines.items()}
  # One chip: smaller than libtpu's default host of 2x2 chips.
  assert counts == {"v4:2x2x1": (4, 4), "v5p:2x2x2": (8, 8),
                    "v5e:2x4": (8, 8), "v6e:2x2": (4, 4),
                    "v5litepod-1": (1, 1), "v5p-8": (4, 4), "v6e:1x1": (1, 1)}
  # A shape libtpu cannot build is a ValueError naming the shapes that exist.
  assert "libtpu_cannot_build_the_TPU_topology_'v5e:3x3'" in error
  assert "2x4,_4x4" in error


def test_build_step_follows_the_config_task_and_model_mapping():
  """The step is built from the config's task (its batch keys and metrics)
  and the one config -> model mapping: a box-regression config (Appendix A's
  shape of task, registered here) builds and lowers with its own batch; the
  classification config's net is the one training builds.  For this
  machine's CPU (no libtpu needed)."""
  import jax
  import jax.numpy as jnp
  import ml_collections
  import numpy as np
  from vgg_jax import input_pipeline, tasks, train

  @tasks.register_task("test_aot_boxes")
  class Boxes(tasks.Task):
    batch_keys = ("image", "box")

    def loss(self, model, batch, *, rngs):
      pred = model(batch["image"], train=True, rngs=rngs)
      return jnp.mean(jnp.sum((pred - batch["box"]) ** 2, -1)), pred

  config = aot.load_experiment(CONFIG)
  config.batch_size = 8
  cpu = jax.devices("cpu")[:1]
  built = aot.build_step(config, cpu, platform="cpu")
  # The classification net is the net training builds from this config.
  info = input_pipeline.dataset_info(config.data)
  assert built.model_kwargs == train.model_kwargs(config, info)
  state, metrics, batch = built.args
  side = config.data.crop_size
  assert {k: (v.shape, np.dtype(v.dtype)) for k, v in batch.items()} == {
      "image": ((8, side, side, 1), np.float32), "label": ((8,), np.int32)}
  assert "top1_hits" in metrics

  with config.unlocked():
    config.task = "test_aot_boxes"
  built = aot.build_step(config, cpu, platform="cpu", num_classes=4)
  state, metrics, batch = built.args
  assert {k: (v.shape, np.dtype(v.dtype)) for k, v in batch.items()} == {
      "image": ((8, 32, 32, 1), np.float32), "box": ((8, 4), np.float32)}
  assert set(metrics) == {"loss_sum", "examples", "steps",
                          "first_nonfinite_step"}
  assert state["params"]["fc3"]["kernel"].shape[-1] == 4  # 4 box outputs
  # The step traces and lowers with the box batch (compiling is what the
  # libtpu tests above exercise; here it would only cost time).
  hlo = built.jitted.lower(*built.args).as_text()
  assert "tensor<8x4xf32>" in hlo and "tensor<8x32x32x1xf32>" in hlo
  with pytest.raises(ValueError, match="no shape known for batch key"):
    type("Odd", (Boxes,), {"batch_keys": ("image", "mask_map")})(
        ).batch_specs(8, (32, 32, 1))


def test_forward_macs_follow_the_configs_pool_rounding():
  """The README default (A-BN, 28x28, Caffe's ceil pooling 28-14-7-4-2-1):
  the report's FLOP count once assumed floor pooling, for which 28 px is
  too small (0x0 after the fifth pool), and refused the config."""
  from experiments import fashion_mnist  # pylint: disable=g-import-not-at-top
  config = fashion_mnist.get_config()
  assert config.model.pool_rounding == "ceil"
  kw = train.model_kwargs(config, input_pipeline.dataset_info(config.data))
  sides_and_channels = [(28, 1, 12), (14, 12, 24), (7, 24, 48), (7, 48, 48),
                        (4, 48, 96), (4, 96, 96), (2, 96, 96), (2, 96, 96)]
  want = sum(s * s * 9 * a * b for s, a, b in sides_and_channels)
  want += 96 * 512 + 512 * 512 + 512 * 10  # FC1 is 1x1 at 1x1
  assert aot.forward_macs(kw, config.data.crop_size) == want


def test_point_key_tells_slices_apart():
  """A multislice point is not the single-slice point of the same topology
  (the sweep's cache would otherwise hand one for the other)."""
  config = _sweep_config()
  one = aot.point_key(config, "v5e:4x4", 256)
  assert one == aot.point_key(config, "v5litepod-16", 256, num_slices=1)
  assert aot.point_key(config, "v5e:4x4", 256, num_slices=2) != one
