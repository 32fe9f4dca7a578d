"""Evaluation examples that could not be decoded count as errors.

The evaluation iterators never drop an example: one whose image cannot be
decoded gets mask 0 and ``decode_error`` 1, and its iterator lists it in
``failed``.  ``eval.classifier.evaluate_classifier`` scores mask-1 examples
only, so on its own it would report the accuracy of the decodable part of the
split.  ``count_failures_as_errors`` puts the undecodable examples back in
the denominator as misses (top-1 and top-5): the split's size is what the
errors are over, and an unreadable example can only lower the accuracy.
"""

from __future__ import annotations

import numpy as np


def global_count(local: int) -> int:
  """Sum of ``local`` over every JAX process."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return int(local)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(np.sum(multihost_utils.process_allgather(np.int64(local))))


def count_failures_as_errors(result: dict, num_failed: int) -> dict:
  """``result`` ({"top1_error", "top5_error", "num_examples"} over decodable
  examples) with ``num_failed`` undecodable examples added as misses; adds
  "num_undecodable"."""
  n = int(result["num_examples"])
  total = n + int(num_failed)
  out = dict(result, num_undecodable=int(num_failed), num_examples=total)
  if num_failed and total:
    for key in ("top1_error", "top5_error"):
      hits = round((1.0 - result[key]) * n)  # exact: counts over n
      out[key] = 1.0 - hits / total
  return out
