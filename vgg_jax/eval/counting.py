"""Top-1 / top-5 error (paper §4): masked counts on device, errors on host."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

TOP_K = 5


def topk_hits(scores: jax.Array, labels: jax.Array, mask: jax.Array
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(top-1 hits, top-5 hits, number of real examples) of one batch.

  ``scores`` are logits or posteriors (N, classes): soft-max is monotone, so
  both rank the classes alike.  ``mask`` is 1 for real examples, 0 for
  padding; padding never counts.  Top-5 means "the label is among the k
  highest scores", k = min(5, classes).
  """
  k = min(TOP_K, scores.shape[-1])
  _, top = jax.lax.top_k(scores, k)
  hit = top == labels[:, None].astype(top.dtype)
  mask = mask.astype(jnp.int32)
  top1 = jnp.sum(hit[:, 0].astype(jnp.int32) * mask)
  top5 = jnp.sum(jnp.any(hit, axis=1).astype(jnp.int32) * mask)
  return top1, top5, jnp.sum(mask)


def errors_from_counts(top1_hits: int, top5_hits: int, num_examples: int
                       ) -> dict[str, float | int]:
  if num_examples <= 0:
    raise ValueError("no examples were evaluated (every mask was 0 or the "
                     "iterator was empty); check the evaluation split")
  return {"top1_error": 1.0 - top1_hits / num_examples,
          "top5_error": 1.0 - top5_hits / num_examples,
          "num_examples": int(num_examples)}


def errors_of(posteriors: np.ndarray, labels: np.ndarray
              ) -> dict[str, float | int]:
  """Top-1/top-5 error; NaN rows (undecodable images) count as errors."""
  labels = np.asarray(labels)
  ok = ~np.isnan(posteriors).any(axis=1)
  k = min(TOP_K, posteriors.shape[1])
  safe = np.where(ok[:, None], posteriors, 0)
  top = np.argsort(-safe, axis=1, kind="stable")[:, :k]
  hit = (top == labels[:, None]) & ok[:, None]
  n = len(labels)
  if n == 0:
    raise ValueError("no examples")
  return {"top1_error": float(1 - hit[:, 0].sum() / n),
          "top5_error": float(1 - hit.any(axis=1).sum() / n),
          "num_examples": int(n), "num_failed": int((~ok).sum())}
