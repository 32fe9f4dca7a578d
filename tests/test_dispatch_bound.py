"""The multi-process rehearsal's hang, reproduced in one process, and its fix.

XLA's CPU client runs each local device's share of a computation on a pool
of max(cores, local devices) threads; a launch that finds its device with 32
computations in flight blocks one of those threads.  With 2 local devices
and a 2-thread pool, a host that dispatches far enough ahead leaves a
collective step without the thread its second participant needs, and the
all-reduce waits forever (launch/local_multiprocess_cpu.sh hung this way on
2-core machines).  ``sharding.DispatchBound``, used by the training and
evaluation loops, waits every few steps so that never happens.

``PJRT_NPROC=2`` pins the pool to 2 threads, so the hazard shows on any
machine, not only on 2-core ones.
"""

import os
import pathlib
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).absolute().parents[1]

SCRIPT = """
import sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from vgg_jax import sharding
mesh = Mesh(np.array(jax.devices()), ("data",))

@jax.jit
def step(w, x):  # batch-sharded x: the mean over it is an all-reduce
  g = jnp.mean(jnp.tanh(x @ w), axis=0)
  return w - 1e-3 * g[None, :]

w = jax.device_put(jnp.full((512, 512), 0.01), NamedSharding(mesh, P()))
x = jax.device_put(jnp.ones((1024, 512)), NamedSharding(mesh, P("data")))
bound = sharding.DispatchBound() if sys.argv[1] == "bounded" else None
for _ in range(400):
  w = step(w, x)
  if bound is not None:
    bound(w)
w.block_until_ready()
print("finished")
"""


def _start(mode):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             PJRT_NPROC="2",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  return subprocess.Popen([sys.executable, "-c", SCRIPT, mode], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True)


@pytest.mark.multiprocess
def test_bounded_dispatch_finishes_where_unbounded_dispatch_hangs():
  bounded, free = _start("bounded"), _start("unbounded")
  try:
    t0 = time.time()
    out, _ = bounded.communicate(timeout=120)
    took = time.time() - t0
    assert bounded.returncode == 0 and "finished" in out, out[-2000:]
    # The control: the same loop without the bound is still stuck in its
    # all-reduce long after the bounded one finished (it never finishes).
    try:
      free.wait(timeout=max(15.0, 2 * took))
    except subprocess.TimeoutExpired:
      pass
    assert free.poll() is None, (
        "the unbounded loop finished: the thread-pool hazard this test "
        "guards against did not show (did XLA's CPU client change?)")
  finally:
    for p in (bounded, free):
      if p.poll() is None:
        p.kill()
        p.wait()


def test_dispatch_bound_refuses_a_zero_interval():
  from vgg_jax import sharding  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="expected >= 1"):
    sharding.DispatchBound(0)
