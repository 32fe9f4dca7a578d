"""JAX's persistent compilation cache, the same way for every command.

A run's programs (the training and evaluation steps, and the many small
ones of parameter initialisation, each a sub-second compile: so every
program is cached) are loaded from disk by the next run of the same shapes
instead of compiled again: ~15-20 s of the README job's start-up on a 2-core
CPU, and most of each command's start-up in ``experiments/mini/run.py``.
JAX keys each entry by the program, the backend, the flags and the jax
version, so a stale entry is never used, and a loaded executable is the one
XLA built for the same program (results are unchanged bit for bit).

* ``enable(jax)``: the command-line entry points (``vgg_jax.main``,
  ``vgg_jax.evaluate``, ``vgg_jax.features``) call it before compiling.
  Default folder ``$XDG_CACHE_HOME/vgg_jax/jax_compilation`` (``~/.cache``);
  a folder the user chose (``JAX_COMPILATION_CACHE_DIR``, or set in Python)
  is left alone; ``VGG_JAX_COMPILATION_CACHE=0`` turns it off.
* ``environment(folder)``: the variables that give processes started by a
  driver (the miniature's run.py, the test session) one shared cache of
  every program.  Set before JAX is imported.

No jax import here: the environment must be set before JAX reads it.
"""

from __future__ import annotations

import os
from typing import Mapping

OFF = "VGG_JAX_COMPILATION_CACHE"  # "0": no cache of ours


def default_dir(environ: Mapping[str, str] = os.environ) -> str:
  return os.path.join(
      environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
      "vgg_jax", "jax_compilation")


def environment(folder: str | os.PathLike) -> dict[str, str]:
  """JAX's variables for a cache of every program, however small or quick
  to compile, in ``folder`` (JAX's defaults skip programs that compile in
  under a second: most of a small net's)."""
  return {"JAX_COMPILATION_CACHE_DIR": str(folder),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def enable(jax, environ: Mapping[str, str] = os.environ) -> str | None:
  """Turns the cache on unless the user chose a folder or turned it off;
  the folder used, or None."""
  if environ.get(OFF, "1").strip() == "0":
    return None
  chosen = (environ.get("JAX_COMPILATION_CACHE_DIR")
            or jax.config.jax_compilation_cache_dir)
  if chosen:
    return chosen
  path = default_dir(environ)
  for name, value in environment(path).items():
    jax.config.update(name.lower(), value if name.endswith("_DIR")
                      else int(value))
  return path
