"""Multi-GPU training equals single-GPU training (paper §3.1), for real.

2 processes x 2 CPU devices (jax.distributed over 127.0.0.1 with gloo
collectives), 1 process x 4 devices and 1 process x 1 device run the same
training steps on the same global batches (tests/multihost_worker.py) and
must reach the same parameters, to float tolerance (the gradient all-reduce
sums in a different order).

The real command too: ``launch/local_multiprocess_cpu.sh`` running
``python -m vgg_jax.main`` (input pipeline, checkpointing and all) on a
width-reduced Fashion-MNIST config, with shuffling, random crops, flips and
dropout on, must end with the parameters of the same command run in one
process on one device: the input pipeline's global batches do not depend on
the number of processes.
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")
REPO = pathlib.Path(__file__).absolute().parents[1]
TIMEOUT = 600  # generous: 4 JAX processes compiling at once on a busy 2-core VM
# The smallest Fashion-MNIST run the config allows: net A at 1/16 width, FC
# 32, 3 steps of batch 16 (4 per device on 4 devices), no evaluation, a
# checkpoint at the end; no warm-up, so that each step moves the weights.
# Shuffling, flips and dropout stay on, and a 4-pixel zero border makes the
# crop offsets random too: the global batch of a step (order, examples,
# draws; the input pipeline's global order) and the dropout mask (keyed by
# the step, drawn over the global batch) are the same on any number of
# processes, so the runs must agree.
TINY_RUN = ["--config.model.width_mult=0.0625", "--config.model.fc_width=32",
            "--config.batch_size=16", "--config.eval_batch_size=16",
            "--config.total_steps=3", "--config.warmup_steps=0",
            "--config.eval_every_steps=0", "--config.log_every_steps=1",
            "--config.data.train_pad=4"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _spawn(out, devices, num_processes=1, process_id=0, port=0):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  return subprocess.Popen(
      [sys.executable, str(WORKER), "--devices", str(devices),
       "--num_processes", str(num_processes), "--process_id",
       str(process_id), "--port", str(port), "--out", str(out)],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _wait(procs):
  outputs = []
  try:
    for p in procs:
      out, _ = p.communicate(timeout=TIMEOUT)
      outputs.append(out)
  finally:
    for p in procs:
      if p.poll() is None:
        try:  # the launch script's children too (own session, see below)
          os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
          p.kill()
        p.wait()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, f"worker failed:\n{out[-4000:]}"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  root = tmp_path_factory.mktemp("multihost")
  port = _free_port()
  procs = [_spawn(root / "1x1", 1), _spawn(root / "1x4", 4)]
  procs += [_spawn(root / "2x2", 2, 2, i, port) for i in range(2)]
  _wait(procs)
  return {k: dict(np.load(root / k / "params.npz"))
          for k in ("1x1", "1x4", "2x2")}


@pytest.mark.parametrize("setup", ["1x4", "2x2"])
def test_same_parameters_as_one_device(results, setup):
  one, other = results["1x1"], results[setup]
  keys = [k for k in other if k.startswith("A-BN/")]
  assert sorted(keys) == sorted(one)
  assert any(k.endswith("/mean") for k in one), sorted(one)  # BatchStats
  for k in keys:
    np.testing.assert_allclose(other[k], one[k], rtol=2e-4, atol=2e-6,
                               err_msg=f"{setup}: {k}")


def test_fc_kernels_sharded_over_a_model_axis_give_the_same_parameters(
    results):
  one, other = results["1x1"], results["1x4"]
  for k in one:
    np.testing.assert_allclose(other["A-BN@model2/" + k[len("A-BN/"):]], one[k],
                               rtol=2e-4, atol=2e-6, err_msg=k)


def test_training_moved_the_parameters(results):
  # Guard against a vacuous comparison: 3 steps changed every kernel.
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from vgg_jax.models import create_model  # pylint: disable=g-import-not-at-top
  model = create_model("A-BN", num_classes=10, rngs=nnx.Rngs(0),
                       width_mult=1 / 16, fc_width=32, head_window=1,
                       init="he")
  init = {"A-BN/" + "/".join(map(str, k)): np.asarray(v.get_value())
          for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  del jax
  for k, v in init.items():
    if k.endswith("kernel"):
      assert np.abs(results["1x1"][k] - v).max() > 1e-6, k


def _main_env(devices=None):
  env = dict(os.environ, PYTHONPATH=str(REPO), PYTHON=sys.executable,
             JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  if devices is not None:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _params_of_workdir(workdir):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from vgg_jax import checkpointing  # pylint: disable=g-import-not-at-top
  model, meta = checkpointing.load_model_from_workdir(workdir)
  flat = {"/".join(map(str, k)): np.asarray(v.get_value())
          for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  return flat, meta


@pytest.fixture(scope="module")
def main_runs(tmp_path_factory):
  """The real command, 2 processes x 2 devices (launch script) and 1 x 1."""
  root = tmp_path_factory.mktemp("main")
  config = str(REPO / "experiments" / "fashion_mnist.py")
  env2 = _main_env()
  env2["PORT"] = str(_free_port())
  procs = [
      subprocess.Popen(
          ["bash", str(REPO / "launch" / "local_multiprocess_cpu.sh"), config,
           str(root / "2x2")] + TINY_RUN, cwd=REPO, env=env2,
          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
          start_new_session=True),
      subprocess.Popen(
          [sys.executable, "-m", "vgg_jax.main", "--config", config,
           "--workdir", str(root / "1x1")] + TINY_RUN, cwd=REPO,
          env=_main_env(devices=1), stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT, text=True)]
  _wait(procs)
  return root


@pytest.mark.slow
@pytest.mark.multiprocess
def test_real_command_two_processes_equals_one_device(main_runs):
  import json  # pylint: disable=g-import-not-at-top
  two, meta2 = _params_of_workdir(main_runs / "2x2")
  one, meta1 = _params_of_workdir(main_runs / "1x1")
  assert meta2["step"] == meta1["step"] == 3
  # With everything random on: shuffling, flips, crop offsets, dropout.
  for run in ("2x2", "1x1"):
    cfg = json.loads((main_runs / run / "config.json").read_text())
    assert cfg["data"]["shuffle"] and cfg["data"]["flip"], run
    assert cfg["data"]["train_pad"] == 4, run
    assert cfg["model"]["dropout_rate"] > 0, run
  assert sorted(two) == sorted(one) and any("conv" in k for k in one)
  for k in one:
    np.testing.assert_allclose(two[k], one[k], rtol=2e-4, atol=2e-6,
                               err_msg=k)
  # Both runs really trained on the same batches: the logged losses agree
  # step by step (process 0 writes the 2-process run's metrics).
  def losses(workdir):
    rows = [json.loads(line) for line in
            (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["train_loss"] for r in rows if r["kind"] == "train"]
  l2, l1 = losses(main_runs / "2x2"), losses(main_runs / "1x1")
  assert len(l1) == 3, l1
  np.testing.assert_allclose(l2, l1, rtol=1e-4)
  # And the comparison is not vacuous: 3 steps moved every kernel away from
  # the seed-0 initialisation both runs started from.
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from vgg_jax.models import create_model  # pylint: disable=g-import-not-at-top
  init = create_model(**meta1["model"], init="he", rngs=nnx.Rngs(0))
  for k, v in nnx.to_flat_state(nnx.state(init, nnx.Param)):
    name = "/".join(map(str, k))
    if name.endswith("kernel"):
      assert np.abs(one[name] - np.asarray(v.get_value())).max() > 1e-5, name
