"""glibc malloc settings that stop XLA:CPU re-faulting its scratch memory.

XLA:CPU allocates each execution's temporaries as one block with malloc (80 MB
for the Fashion-MNIST training step).  glibc serves any block over its
largest mmap threshold (32 MB) with a fresh ``mmap`` and unmaps it on free, so
the kernel faults in and zeroes every page of it again on every step:
measured on the 2-core machine, 1.4M page faults per 60 steps and ~30% of
the step's CPU time spent in the kernel (``sys``).  With mmap off and one
arena, glibc carves the block from the heap and keeps it after free (trim
threshold), and the next step reuses the same, already mapped pages: page
faults drop 7x and the kernel time to ~1%.  The price: the heap keeps its peak
(fragmentation settles within ~60 steps; a few hundred MB more resident).

One arena (not glibc's 8 per core) is needed because blocks larger than a
thread arena's 64 MB heap fall back to mmap whatever ``M_MMAP_MAX`` says.
The settings only matter where XLA runs on the CPU; on GPU/TPU hosts they
touch only host-side allocations (grain worker processes are separate
processes and keep glibc's defaults).

Call :func:`reuse_freed_memory` before JAX starts its thread pools (first
thing in a main); set ``VGG_JAX_GLIBC_MALLOC=default`` to leave glibc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

_applied = False


def reuse_freed_memory() -> bool:
  """Applies the settings once; True if glibc took them (False elsewhere)."""
  global _applied
  if _applied:
    return True
  if os.environ.get("VGG_JAX_GLIBC_MALLOC", "") == "default":
    return False
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  ok = (mallopt(M_ARENA_MAX, 1) == 1 and mallopt(M_MMAP_MAX, 0) == 1 and
        mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1)
  _applied = ok
  return ok
