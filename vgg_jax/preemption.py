"""SIGTERM before the training loop starts: remembered, not fatal.

``vgg_jax.main`` calls ``install()`` first thing, so a preemption notice
that arrives during start-up (imports, data loading, compilation: minutes
on a big job) is recorded instead of killing the process with no
checkpoint.  ``train.PreemptionFlag`` reads ``received()`` when the loop
starts: the run then takes one step, saves a checkpoint and exits 0, as for
a SIGTERM during training.

Several processes: ``vgg_jax.main`` calls ``uninstall()`` before
``jax.distributed.initialize``, whose preemption notifier then owns SIGTERM
(every process stops at the same step).  A SIGTERM that came before is
delivered again to the restored handler (by default the process ends: it has
no checkpoint to save yet), so it is never swallowed.  A process blocked in
a collective when SIGTERM comes is ended by vgg_jax/watchdog.py.
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
  orbax's sync point handle SIGTERM, so every host stops at the same step.
  A SIGTERM already received is raised again for the restored handler."""
  global _previous, _received
  if _previous is not None:
    try:
      signal.signal(signal.SIGTERM, _previous)
    except ValueError:
      return
    _previous = None
    if _received:
      _received = False
      log.warning("SIGTERM received during start-up of a multi-process run, "
                  "before any step: passing it on")
      signal.raise_signal(signal.SIGTERM)


def received() -> bool:
  return _received
