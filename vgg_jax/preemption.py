"""SIGTERM before the training loop starts: remembered, not fatal.

``vgg_jax.main`` calls ``install()`` first thing, so a preemption notice
that arrives during start-up (imports, data loading, compilation: minutes
on a big job) is recorded instead of killing the process with no
checkpoint.  ``train.PreemptionFlag`` reads ``received()`` when the loop
starts: the run then takes one step, saves a checkpoint and exits 0, as for
a SIGTERM during training.
"""

from __future__ import annotations

import logging
import signal

log = logging.getLogger(__name__)

_received = False
_previous = None


def _handler(signum, frame):
  del signum, frame
  global _received
  _received = True
  log.warning("SIGTERM received during start-up: the run will save a "
              "checkpoint after its first step and stop")


def install() -> None:
  """Records SIGTERM from now on (main thread only; a no-op elsewhere)."""
  global _previous
  try:
    _previous = signal.signal(signal.SIGTERM, _handler)
  except ValueError:  # not the main thread
    pass


def uninstall() -> None:
  """Restores the handler ``install`` replaced.  Multi-process runs call it
  before ``jax.distributed.initialize``: there JAX's preemption notifier and
  orbax's sync point handle SIGTERM, so every host stops at the same step."""
  global _previous
  if _previous is not None:
    try:
      signal.signal(signal.SIGTERM, _previous)
    except ValueError:
      return
    _previous = None


def received() -> bool:
  return _received
