"""Top-1/top-5 error of a classifier over batches of crops (paper §4): the
evaluator of the training loop's validation (``eval/registry.py``'s
"classification" evaluator)."""

from __future__ import annotations

import functools
from typing import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vgg_jax import sharding as sharding_lib
from vgg_jax import watchdog
from vgg_jax.eval import dense
from vgg_jax.eval.counting import errors_from_counts, topk_hits


@functools.partial(jax.jit, static_argnums=(0, 1))
def _classifier_hits(graphdef, flips, state, images, labels, mask):
  model = nnx.merge(graphdef, state)
  if not flips:
    return topk_hits(model(images, train=False), labels, mask)
  # §3.2's flip averaging, through the dense engine's crop path: the
  # soft-max posteriors of each crop and its mirror, averaged.
  out = dense.CLASS_POSTERIORS
  x = jnp.concatenate([images, images[:, :, ::-1]])
  return topk_hits(out.merge_crops(out.crop(model, x), True,
                                   images.shape[0], 1), labels, mask)


def evaluate_classifier(model: nnx.Module,
                        batches: Iterable[Mapping[str, np.ndarray]], *,
                        mesh: jax.sharding.Mesh | None = None,
                        flips: bool = False) -> dict[str, float | int]:
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
    flips: rank the average of the soft-max posteriors of each crop and its
      horizontal mirror (the paper's test-set augmentation, §3.2) instead
      of the crop's logits.

  Returns:
    {"top1_error", "top5_error", "num_examples"}: errors as fractions in
    [0, 1], computed over real (mask 1) examples of all processes.
  """
  if mesh is None and jax.process_count() > 1:
    mesh = sharding_lib.default_mesh()
  if mesh is not None:
    mesh = sharding_lib.auto_axes(mesh)
  graphdef, state = nnx.split(model)
  state = sharding_lib.replicate(state, mesh)
  multiple = sharding_lib.local_multiple(mesh)
  totals = None
  bound_dispatch = sharding_lib.DispatchBound()
  for batch in batches:
    batch = sharding_lib.pad_batch({k: batch[k] for k in ("image", "label", "mask")
                       if k in batch}, multiple)
    batch["label"] = np.asarray(batch["label"], np.int32)
    arrays = sharding_lib.put_batch(batch, mesh)
    hits = _classifier_hits(graphdef, bool(flips), state, arrays["image"],
                            arrays["label"], arrays["mask"])
    # Summed on device and fetched once at the end; the host only waits
    # every few batches (DispatchBound) so that it cannot run far ahead.
    totals = hits if totals is None else tuple(
        a + b for a, b in zip(totals, hits))
    bound_dispatch(totals)
    watchdog.heartbeat("the next evaluation batch")
  if totals is None:
    raise ValueError("evaluate_classifier got no batches")
  top1, top5, n = (int(jax.device_get(t)) for t in totals)
  return errors_from_counts(top1, top5, n)


