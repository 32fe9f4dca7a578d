"""Test-session set-up shared by every test module."""

import os
import shutil
import tempfile

import pytest

from vgg_jax import compilation_cache, host_malloc, xla_cpu

# As vgg_jax.main does, before JAX starts: XLA:CPU's per-execution scratch
# memory is reused instead of being page-faulted in afresh every call, and
# XLA:CPU gets the options the commands run with (vgg_jax/xla_cpu.py), so
# the tests and the processes they start compile what users run.
host_malloc.reuse_freed_memory()
xla_cpu.apply()

# No test times convolution schedules unless it asks for conv_impl="autotune"
# on tiny shapes itself: "auto" means im2col on CPUs here (also in the main
# jobs tests start as subprocesses, which inherit the environment), and any
# cache a test writes goes to a throwaway folder, never the user's.
import os as _os  # noqa: E402
import tempfile as _tempfile  # noqa: E402

_os.environ.setdefault("VGG_JAX_CONV_AUTOTUNE", "0")
_os.environ.setdefault("VGG_JAX_CONV_CACHE_DIR",
                       _tempfile.mkdtemp(prefix="vgg_jax_conv_cache_"))

# One JAX compilation cache for the session, in a fresh temporary directory,
# shared through the environment with the processes the tests start (not
# the multi-process runs: below; the fault tests, tests/test_mini.py and others run `python -m vgg_jax.main` on
# the same tiny shapes dozens of times): a program compiled once is loaded,
# not compiled again.  A cached executable is the one XLA built for the same
# program, so results are unchanged (the kill/resume tests compare runs bit
# for bit).  Set before JAX is imported; an outer JAX_COMPILATION_CACHE_DIR
# is left alone.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="vgg_jax_tests_xla_cache_")
  # Every program, however small or quick to compile.
  os.environ.update(compilation_cache.environment(_OWN_CACHE))


@pytest.fixture(autouse=True, scope="module")
def _no_compilation_cache_across_processes(request):
  """Modules with ``multiprocess`` tests start their JAX processes without
  the cache.  One multi-process run that loaded cached programs once never
  reached its first step; the cause was found since (the host running 32+
  steps ahead of XLA's CPU thread pool, now bounded by
  ``sharding.DispatchBound``, docs/reliability.md), but these modules keep
  compiling, as they were validated."""
  module = request.module
  if not any(item.get_closest_marker("multiprocess")
             for item in request.session.items
             if getattr(item, "module", None) is module):
    yield
    return
  patch = pytest.MonkeyPatch()
  for key in list(os.environ):
    if key.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE")):
      patch.delenv(key)
  patch.setenv(compilation_cache.OFF, "0")  # nor the commands' own
  yield
  patch.undo()


def pytest_unconfigure(config):
  # The process that made the cache removes it (not each xdist worker).
  if _OWN_CACHE and not hasattr(config, "workerinput"):
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(session, config, items):
  """Modules with a test marked ``slow`` first (collection order otherwise).

  setup.cfg runs the suite on two pytest-xdist workers, one test file at a
  time each (``--dist loadfile``: a module's fixtures, such as the
  mini-tables run or the fault tests' reference run, are built once), taking
  files in this order: the long files start early instead of one of them
  starting last while the other worker has nothing left to do.
  """
  del session, config
  slow_files = {item.nodeid.split("::")[0] for item in items
                if item.get_closest_marker("slow")}
  items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow_files)
