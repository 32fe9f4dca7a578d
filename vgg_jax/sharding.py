"""Mesh and shardings: synchronous data parallelism (paper §3.1, "Implementation").

The paper splits each batch over 4 GPUs, averages the gradients and gets
exactly single-GPU training.  Here one ``jax.jit`` runs over a mesh of every
device of every host: the batch is split along the mesh's ``"data"`` axis,
parameters are replicated, and XLA inserts the gradient all-reduce.  The
result equals one-device training up to float summation order
(tests/test_multihost.py).

Hook for model parallelism: ``make_mesh(model=k)`` adds a ``"model"`` axis
and ``param_shardings(state, mesh, rule=shard_fc_kernels)`` splits the big
FC kernels (FC1 is 7x7x512x4096 = 103M of D's 138M parameters) over it;
``rule`` is any function ``(path, array) -> PartitionSpec``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
MODEL_AXIS = "model"

ShardingRule = Callable[[tuple, Any], P]


def make_mesh(model: int = 1, devices=None) -> Mesh:
  """A ('data', 'model') mesh over all devices of all processes.

  ``model`` > 1 reserves that many devices per model replica for the FC
  kernels (see ``shard_fc_kernels``); the rest is data parallelism.
  """
  n = len(devices) if devices is not None else jax.device_count()
  if model < 1 or n % model:
    raise ValueError(f"the model axis ({model}) must divide the number of "
                     f"devices ({n})")
  if devices is not None:
    return Mesh(np.asarray(devices).reshape(n // model, model),
                (DATA_AXIS, MODEL_AXIS),
                axis_types=(jax.sharding.AxisType.Auto,) * 2)
  # Auto axes: XLA propagates the shardings (jax.make_mesh's default is
  # Explicit, which makes every reshape in the model name its sharding).
  return jax.make_mesh((n // model, model), (DATA_AXIS, MODEL_AXIS),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def num_data_shards(mesh: Mesh) -> int:
  return int(mesh.shape[DATA_AXIS])


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data', the rest whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """The per-process batch; a clear error if the batch does not divide."""
  shards = num_data_shards(mesh)
  procs = jax.process_count()
  if global_batch_size <= 0 or global_batch_size % shards:
    raise ValueError(
        f"batch_size {global_batch_size} is not divisible by the "
        f"{shards} data-parallel devices ({jax.device_count()} devices, "
        f"model axis {mesh.shape[MODEL_AXIS]}); choose a multiple of "
        f"{shards}, e.g. --config.batch_size="
        f"{max(shards, global_batch_size // shards * shards)}")
  if global_batch_size % procs:
    raise ValueError(f"batch_size {global_batch_size} is not divisible by "
                     f"the {procs} processes")
  return global_batch_size // procs


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh
                ) -> dict[str, jax.Array]:
  """This process's slice of the global batch -> one global jax.Array per key.

  Every process passes its own rows (``local_batch = global / processes``);
  ``jax.make_array_from_process_local_data`` assembles them along 'data'.
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def shard_fc_kernels(path: tuple, x: Any) -> P:
  """Model-parallel rule: split FC1/FC2 kernels' output units over 'model'.

  FC layers are stored as convs (kh, kw, in, out); biases stay replicated.
  Use with ``make_mesh(model=k)``; on a mesh whose model axis is 1 this is
  plain replication.
  """
  names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
  if any(n in ("fc1", "fc2") for n in names) and "kernel" in names and (
      getattr(x, "ndim", 0) == 4):
    return P(None, None, None, MODEL_AXIS)
  return P()


def param_shardings(tree: Any, mesh: Mesh,
                    rule: ShardingRule | None = None) -> Any:
  """NamedShardings for every leaf of ``tree`` (default: replicated).

  ``rule(path, leaf) -> PartitionSpec`` is the hook for sharding parameters;
  it sees optimiser-state leaves too (they mirror the parameters' paths, so
  momentum is sharded like its parameter).
  """
  rule = rule or (lambda path, x: P())

  def one(path, x):
    spec = rule(path, x)
    if spec != P():
      dim = x.shape[-1]
      if dim % mesh.shape[MODEL_AXIS]:
        spec = P()  # cannot split evenly: keep replicated
    return NamedSharding(mesh, spec)

  return jax.tree_util.tree_map_with_path(one, tree)
