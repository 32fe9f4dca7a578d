"""The paper's test protocols (§3.2) and top-1/top-5 error (§4).

One code path serves training-time evaluation and the command line:

* ``evaluate_classifier(model, batches, mesh=None)``: top-1/top-5 error of
  a model over batches of {"image", "label", "mask"} (the training loop's
  evaluator).  Mask-aware: padded examples are never counted, and with a
  mesh over several hosts every example is counted exactly once.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

TOP_K = 5


# ---------------------------------------------------------------------------
# Counting: top-1 / top-5 hits, masked.
# ---------------------------------------------------------------------------

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


@functools.partial(jax.jit, static_argnums=0)
def _classifier_hits(graphdef, state, images, labels, mask):
  model = nnx.merge(graphdef, state)
  return topk_hits(model(images, train=False), labels, mask)


# ---------------------------------------------------------------------------
# Data parallelism: batches are process-local; a mesh makes them global.
# ---------------------------------------------------------------------------

def _data_axes(mesh: jax.sharding.Mesh) -> tuple[str, ...]:
  """The mesh axes the batch is split over: 'data' if the mesh has one."""
  if "data" in mesh.axis_names:
    return ("data",)
  return tuple(mesh.axis_names)


def _num_batch_shards(mesh: jax.sharding.Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in _data_axes(mesh)]))


def default_mesh() -> jax.sharding.Mesh:
  """A 1-D 'data' mesh over every device of every host."""
  return jax.make_mesh((jax.device_count(),), ("data",))


def pad_batch(batch: Mapping[str, np.ndarray], multiple: int
              ) -> dict[str, np.ndarray]:
  """Pads a batch's leading axis to a multiple; padding gets mask 0."""
  batch = dict(batch)
  n = len(batch["label"])
  if "mask" not in batch:
    batch["mask"] = np.ones((n,), np.int32)
  extra = (-n) % multiple
  if extra:
    for key, value in batch.items():
      value = np.asarray(value)
      pad = np.zeros((extra,) + value.shape[1:], value.dtype)
      batch[key] = np.concatenate([value, pad])
  return batch


def put_batch(batch: Mapping[str, np.ndarray],
              mesh: jax.sharding.Mesh | None) -> dict[str, jax.Array]:
  """Host batch -> device arrays; with a mesh, one global array per key.

  Each process passes its own local slice;
  ``jax.make_array_from_process_local_data`` stitches the slices of all
  processes into one array split over the mesh's data axes.
  """
  if mesh is None:
    return {k: jnp.asarray(v) for k, v in batch.items()}
  axes = _data_axes(mesh)
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    spec = P(axes, *([None] * (value.ndim - 1)))
    out[key] = jax.make_array_from_process_local_data(
        NamedSharding(mesh, spec), value)
  return out


def replicate(tree: Any, mesh: jax.sharding.Mesh | None) -> Any:
  if mesh is None:
    return tree
  return jax.device_put(tree, NamedSharding(mesh, P()))


def _local_multiple(mesh: jax.sharding.Mesh | None) -> int:
  """Local batches are padded to a multiple of this (devices per process)."""
  if mesh is None:
    return 1
  return max(1, _num_batch_shards(mesh) // jax.process_count())


# ---------------------------------------------------------------------------
# The training loop's evaluator.
# ---------------------------------------------------------------------------

def errors_from_counts(top1_hits: int, top5_hits: int, num_examples: int
                       ) -> dict[str, float | int]:
  if num_examples <= 0:
    raise ValueError("no examples were evaluated (every mask was 0 or the "
                     "iterator was empty); check the evaluation split")
  return {"top1_error": 1.0 - top1_hits / num_examples,
          "top5_error": 1.0 - top5_hits / num_examples,
          "num_examples": int(num_examples)}


def evaluate_classifier(model: nnx.Module,
                        batches: Iterable[Mapping[str, np.ndarray]], *,
                        mesh: jax.sharding.Mesh | None = None
                        ) -> dict[str, float | int]:
  """Top-1 / top-5 error of ``model`` over ``batches``.

  Args:
    model: an NNX classifier; ``model(images)`` gives logits (N, classes).
    batches: process-local batches {"image": (n, H, W, C) float32 (already
      normalised), "label": (n,) int, "mask": (n,) 1 real / 0 padding};
      "mask" may be left out (all real).  On several processes every process
      must yield the same number of batches of the same shapes (the eval
      iterators pad to guarantee this).
    mesh: the batch is split over its 'data' axis (or all axes) and the
      model replicated.  When None on a multi-process run, a mesh over all
      devices is used so that counts are global.

  Returns:
    {"top1_error", "top5_error", "num_examples"}: errors as fractions in
    [0, 1], computed over real (mask 1) examples of all processes.
  """
  if mesh is None and jax.process_count() > 1:
    mesh = default_mesh()
  graphdef, state = nnx.split(model)
  state = replicate(state, mesh)
  multiple = _local_multiple(mesh)
  totals = None
  for batch in batches:
    batch = pad_batch({k: batch[k] for k in ("image", "label", "mask")
                       if k in batch}, multiple)
    batch["label"] = np.asarray(batch["label"], np.int32)
    arrays = put_batch(batch, mesh)
    hits = _classifier_hits(graphdef, state, arrays["image"], arrays["label"],
                            arrays["mask"])
    # Summed on device; fetched once at the end (no per-batch host sync).
    totals = hits if totals is None else tuple(
        a + b for a, b in zip(totals, hits))
  if totals is None:
    raise ValueError("evaluate_classifier got no batches")
  top1, top5, n = (int(jax.device_get(t)) for t in totals)
  return errors_from_counts(top1, top5, n)
