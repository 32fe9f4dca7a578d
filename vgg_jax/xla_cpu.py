"""XLA:CPU options this project measured faster, set before JAX starts.

jax 0.10's XLA:CPU hands each convolution to YNNPACK (an "individual
convolution" library fusion).  YNNPACK computes a convolution's gradients
slowly on this project's Zen 4 CPU: VGG-D's layers, forward and both
gradients at batch 8, took 1.4-3.6x as long as in Eigen (XLA's path before
YNNPACK); in a profile of the D step (``benchmarks/step_profile.py``) the
224x224 64->64 layer's kernel gradient alone took 0.85 s, at 35 GFLOP/s.
``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` sends
convolutions back to Eigen and leaves matrix products with YNNPACK (turning
YNNPACK off for them too made the step slower): with it the VGG-D training
step went from 6.7 to 5.6 s at batch 8 (0.72 of the matmul peak), and XLA's
convolution became the autotuner's choice on most layers
(docs/performance.md, ``benchmarks/train_step.py``).

* ``apply()``: the command-line entry points (``vgg_jax.main``,
  ``vgg_jax.evaluate``, ``vgg_jax.features``) and the benchmarks call it
  first, before JAX reads ``XLA_FLAGS`` (when it starts its CPU backend).
  Library users who want the same speed call it before their first JAX
  computation.
* A user's own choice wins: nothing is added when ``XLA_FLAGS`` already sets
  the option, or with ``VGG_JAX_XLA_CPU_FLAGS=0``.
* Only for the jaxlib line it was measured on (0.10.x): XLA aborts on a flag
  it does not know, and the option is experimental.

Results: im2col and the other rewrites in models/conv.py contain no
convolution, so runs pinned to them (the README job, the miniature) compute
the same numbers with or without it; XLA's own convolution rounds
differently in Eigen than in YNNPACK (float32 ulps).  The option only
concerns XLA's CPU backend; GPU and TPU ignore it.

No jax import here: the environment must be set before JAX reads it.
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import MutableMapping

OFF = "VGG_JAX_XLA_CPU_FLAGS"  # "0": leave XLA_FLAGS alone
OPTION = "xla_cpu_experimental_ynn_fusion_type"
FLAGS = (f"--{OPTION}=-individual_convolution",)
MEASURED_JAXLIB = "0.10."


def _jaxlib_version() -> str:
  try:
    return importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return ""


def xla_flags(environ: MutableMapping[str, str] = os.environ,
              jaxlib_version: str | None = None) -> str | None:
  """The XLA_FLAGS value with this project's options, or None to leave it."""
  if environ.get(OFF, "1").strip() == "0":
    return None
  version = _jaxlib_version() if jaxlib_version is None else jaxlib_version
  if not version.startswith(MEASURED_JAXLIB):
    return None
  current = environ.get("XLA_FLAGS", "")
  if f"--{OPTION}" in current:  # the user chose
    return None
  return " ".join(filter(None, [current, *FLAGS]))


def apply(environ: MutableMapping[str, str] = os.environ) -> bool:
  """Adds the options to ``XLA_FLAGS``; True when it did."""
  value = xla_flags(environ)
  if value is None:
    return False
  environ["XLA_FLAGS"] = value
  return True
