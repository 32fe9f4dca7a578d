"""vgg_jax.host_malloc: XLA:CPU's per-step scratch block stops being re-faulted.

Counted, not timed: the kernel's minor page-fault counter of a subprocess
that runs a jitted step whose temporaries (~48 MB) exceed glibc's largest mmap
threshold, with glibc's defaults and with the settings applied.
"""

import json
import os
import subprocess
import sys

import pytest

from vgg_jax import host_malloc

_CHILD = r"""
import json, resource, sys
from vgg_jax import host_malloc
applied = host_malloc.reuse_freed_memory()
import jax, jax.numpy as jnp

@jax.jit
def step(x):
  # Temporaries of 4x the 24 MB input, live at the same time.
  a = jnp.sin(x); b = jnp.cos(x); c = a * b; d = jnp.exp(-c)
  return (a + b + c + d).sum()

x = jnp.ones((6_000_000,), jnp.float32)
for _ in range(70):  # the tuned heap settles (fragmentation) within ~60
  step(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
  step(x).block_until_ready()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _run(env_value):
  env = dict(os.environ, VGG_JAX_GLIBC_MALLOC=env_value)
  out = subprocess.run([sys.executable, "-c", _CHILD], env=env, check=True,
                       capture_output=True, text=True, timeout=300)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="glibc settings; other C libraries are left alone")
def test_settings_stop_per_step_page_faults():
  default = _run("default")
  tuned = _run("")
  assert not default["applied"] and tuned["applied"]
  # glibc's defaults: ~12K fresh pages (48 MB) every step, for ever.
  assert default["faults"] > 50_000, default
  # Tuned: the same pages are reused once the heap has settled.
  assert tuned["faults"] < default["faults"] / 10, (tuned, default)


def test_opt_out_leaves_glibc_alone(monkeypatch):
  monkeypatch.setenv("VGG_JAX_GLIBC_MALLOC", "default")
  monkeypatch.setattr(host_malloc, "_applied", False)
  assert host_malloc.reuse_freed_memory() is False
