"""Test-session set-up shared by every test module."""

from vgg_jax import host_malloc

# As vgg_jax.main does, before JAX starts: XLA:CPU's per-execution scratch
# memory is reused instead of being page-faulted in afresh every call.
host_malloc.reuse_freed_memory()
