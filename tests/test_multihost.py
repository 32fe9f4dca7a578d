"""Multi-GPU training equals single-GPU training (paper §3.1), for real.

2 processes x 2 CPU devices (jax.distributed over 127.0.0.1 with gloo
collectives), 1 process x 4 devices and 1 process x 1 device run the same
training steps on the same global batches (tests/multihost_worker.py) and
must reach the same parameters, to float tolerance (the gradient all-reduce
sums in a different order).
"""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")
TIMEOUT = 300


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
