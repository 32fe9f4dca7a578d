"""Test-session set-up shared by every test module."""

from vgg_jax import host_malloc

# As vgg_jax.main does, before JAX starts: XLA:CPU's per-execution scratch
# memory is reused instead of being page-faulted in afresh every call.
host_malloc.reuse_freed_memory()

# No test times convolution schedules unless it asks for conv_impl="autotune"
# on tiny shapes itself: "auto" means im2col on CPUs here (also in the main
# jobs tests start as subprocesses, which inherit the environment), and any
# cache a test writes goes to a throwaway folder, never the user's.
import os as _os  # noqa: E402
import tempfile as _tempfile  # noqa: E402

_os.environ.setdefault("VGG_JAX_CONV_AUTOTUNE", "0")
_os.environ.setdefault("VGG_JAX_CONV_CACHE_DIR",
                       _tempfile.mkdtemp(prefix="vgg_jax_conv_cache_"))
