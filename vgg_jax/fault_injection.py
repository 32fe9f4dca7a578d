"""Test hooks that inject faults into a real run (docs/reliability.md).

``config.debug_nonfinite_at_step = k`` makes the k-th training step's batch
NaN, so its loss (and every parameter after it) is NaN: the run must stop
naming step k and keep its last good checkpoint.  ``None`` (the default)
leaves batches untouched.  The field may change on resume (a restart
without it continues from the last good checkpoint).
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def poison_batch(batch: dict, step: int, nonfinite_at_step: int | None
                 ) -> dict:
  """``batch`` with NaN images if ``step`` (1-based) is the chosen step."""
  if nonfinite_at_step is None or step != nonfinite_at_step:
    return batch
  log.warning("fault injection: the batch of step %d is made NaN "
              "(config.debug_nonfinite_at_step)", step)
  return {**batch, "image": np.full_like(batch["image"], np.nan)}
