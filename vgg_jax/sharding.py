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


def process_row_block(mesh: Mesh, global_batch_size: int) -> int:
  """Which block of ``global / processes`` consecutive rows of the global

  batch this process's devices hold (``shard_batch`` puts its rows there),
  so the input pipeline can read exactly those rows of the global order.
  ``jax.process_index()`` on the usual meshes; a mesh that gives a process
  scattered rows is a clear error.
  """
  local = check_batch_size(global_batch_size, mesh)
  held = batch_sharding(mesh).addressable_devices_indices_map(
      (global_batch_size,))
  rows = sorted({r for index in held.values()
                 for r in range(*index[0].indices(global_batch_size))})
  first = rows[0]
  if rows != list(range(first, first + local)) or first % local:
    raise ValueError(
        f"process {jax.process_index()}'s devices hold rows {rows[:4]}..."
        f"{rows[-1]} of a global batch of {global_batch_size}, not one block "
        f"of {local} consecutive rows: the input pipeline cannot feed this "
        "mesh; build it with sharding.make_mesh")
  return first // local


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


# ----------------------------------------------------------------------------
# Evaluation: batches of any pytree, padded to the devices, gathered back.
#
# Every placement of data on devices happens in this module: the training
# step (``shard_batch``), the classifier evaluator (``put_batch`` on a global
# mesh) and the dense engine (``LocalPlacement``: each process runs its own
# examples on its own devices, results are gathered at the end with
# ``allgather_rows``, so processes may run different numbers of batches).


def auto_axes(mesh: Mesh) -> Mesh:
  """The same devices and axes with Auto axis types.

  ``jax.make_mesh`` defaults to Explicit axes, under which the model's
  reshape-based pooling of a batch-sharded array has no sharding rule;
  evaluation only splits the batch, so the compiler may place the rest.
  """
  auto = jax.sharding.AxisType.Auto
  if all(t == auto for t in mesh.axis_types):
    return mesh
  return Mesh(mesh.devices, mesh.axis_names,
              axis_types=(auto,) * len(mesh.axis_names))


def default_mesh() -> Mesh:
  """A 1-D 'data' mesh over every device of every host (Auto axes)."""
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def data_axes(mesh: Mesh) -> tuple[str, ...]:
  """The mesh axes a batch is split over: 'data' if the mesh has one."""
  if DATA_AXIS in mesh.axis_names:
    return (DATA_AXIS,)
  return tuple(mesh.axis_names)


def num_batch_shards(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in data_axes(mesh)]))


def local_multiple(mesh: Mesh | None) -> int:
  """Process-local batches are padded to a multiple of this."""
  if mesh is None:
    return 1
  return max(1, num_batch_shards(mesh) // jax.process_count())


def round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def pad_rows(x: np.ndarray, n: int) -> np.ndarray:
  """``x`` with zero rows appended up to ``n`` rows."""
  x = np.asarray(x)
  if len(x) >= n:
    return x
  return np.concatenate([x, np.zeros((n - len(x),) + x.shape[1:], x.dtype)])


def pad_batch(batch: Mapping[str, np.ndarray], multiple: int,
              length_key: str = "label") -> dict[str, np.ndarray]:
  """Pads a batch's leading axis to a multiple; padding gets mask 0."""
  batch = dict(batch)
  n = len(batch[length_key])
  if "mask" not in batch:
    batch["mask"] = np.ones((n,), np.int32)
  target = round_up(n, multiple)
  return {k: pad_rows(v, target) for k, v in batch.items()}


def put_batch(batch: Mapping[str, np.ndarray], mesh: Mesh | None
              ) -> dict[str, jax.Array]:
  """Host batch -> device arrays; with a mesh, one global array per key.

  Each process passes its own local slice;
  ``jax.make_array_from_process_local_data`` stitches the slices of all
  processes into one array split over the mesh's data axes.
  """
  if mesh is None:
    return {k: jax.numpy.asarray(v) for k, v in batch.items()}
  axes = data_axes(mesh)
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    spec = P(axes, *([None] * (value.ndim - 1)))
    out[key] = jax.make_array_from_process_local_data(
        NamedSharding(mesh, spec), value)
  return out


def replicate(tree: Any, mesh: Mesh | None) -> Any:
  if mesh is None:
    return tree
  return jax.device_put(tree, NamedSharding(mesh, P()))


class LocalPlacement:
  """This process's devices (of ``mesh``, default all local ones) as a
  1-D 'data' mesh: batches split over them, parameters replicated.

  Used where processes run independent work (the dense engine): no
  collective runs during compute, so a process may have more batches than
  another; results travel with ``allgather_rows`` at the end.
  """

  def __init__(self, mesh: Mesh | None = None):
    devices = jax.local_devices()
    if mesh is not None:
      devices = [d for d in mesh.devices.flat
                 if d.process_index == jax.process_index()]
    self.multiple = len(devices)
    self.batch_sharding = None
    self.replicated = None
    if len(devices) > 1:
      local = Mesh(np.asarray(devices), (DATA_AXIS,))
      self.batch_sharding = NamedSharding(local, P(DATA_AXIS))
      self.replicated = NamedSharding(local, P())

  def replicate(self, tree: Any) -> Any:
    if self.replicated is None:
      return tree
    return jax.device_put(tree, self.replicated)

  def put(self, x: np.ndarray) -> jax.Array:
    if self.batch_sharding is None:
      return jax.numpy.asarray(x)
    return jax.device_put(x, self.batch_sharding)

  def padded_size(self, m: int, batch: int) -> int:
    """The compiled batch size for ``m`` rows.

    A full batch stays; a partial one (a bucket's last) is padded to the
    next power of two (at most ``batch``), so padding wastes little compute
    and each shape compiles at most log2(batch) + 1 programs.  Sizes are
    multiples of the local devices.
    """
    n = batch if m >= batch else min(batch, 1 << max(0, (m - 1).bit_length()))
    return round_up(max(n, m), self.multiple)


class DispatchBound:
  """Bounds how far the host dispatches ahead of the devices.

  Call it with each step's fresh (not yet donated) output; every
  ``every``-th call waits until that output is computed, so at most
  ``every`` steps are ever in flight.

  Why: XLA's CPU client runs every local device's share of a computation on
  one thread pool of max(cores, local devices) threads, and a launch that
  finds its device already holding 32 computations in flight blocks one of
  those threads until a slot frees.  With 2 local devices on a 2-core host
  (launch/local_multiprocess_cpu.sh) a host that ran 32 steps ahead left the
  step's second participant without a thread: its all-reduce partner waited
  in gloo forever, on every process (docs/reliability.md, "The
  multi-process hang").  On accelerators the wait costs one host dispatch
  latency per ``every`` steps.
  """

  def __init__(self, every: int = 4):
    if every < 1:
      raise ValueError(f"DispatchBound(every={every}): expected >= 1")
    self.every = every
    self.calls = 0

  def __call__(self, tree: Any) -> None:
    self.calls += 1
    if self.calls % self.every == 0:
      leaves = jax.tree_util.tree_leaves(tree)
      if leaves:  # one execution's outputs become ready together
        jax.block_until_ready(leaves[0])


def _allgather(x: np.ndarray) -> np.ndarray:
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x))


def allgather_rows(arrays: Mapping[str, np.ndarray], fills: Mapping[str, Any]
                   ) -> dict[str, np.ndarray]:
  """Every process's rows of each array, concatenated in process order.

  Processes may hold different numbers of rows: each pads to the largest
  count, and the padding is dropped after the gather.  Single process: the
  arrays themselves.
  """
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  if jax.process_count() == 1:
    return arrays
  m = len(next(iter(arrays.values())))
  size = int(np.max(_allgather(np.int64(m))))

  def gather(x, fill):
    pad = np.full((size - len(x),) + x.shape[1:], fill, x.dtype)
    g = _allgather(np.concatenate([x, pad]))
    return g.reshape((-1,) + x.shape[1:])

  valid = gather(np.ones((m,), np.int32), 0) == 1
  return {k: gather(v, fills[k])[valid] for k, v in arrays.items()}


def allgather_strings(strings: list[str]) -> list[str]:
  """Every process's strings, concatenated in process order."""
  if jax.process_count() == 1:
    return list(strings)
  m = len(strings)
  width = int(np.max(_allgather(np.int64(
      max([len(s.encode()) for s in strings] + [1])))))
  enc = np.zeros((m, width), np.uint8)
  for i, s in enumerate(strings):
    b = s.encode()
    enc[i, :len(b)] = np.frombuffer(b, np.uint8)
  rows = allgather_rows({"s": enc}, {"s": 0})["s"]
  return [bytes(r).rstrip(b"\0").decode() for r in rows]


def allgather_json(obj: Any) -> list[Any]:
  """Every process's JSON-able ``obj``, in process order."""
  if jax.process_count() == 1:
    return [obj]
  import json  # pylint: disable=g-import-not-at-top
  text = json.dumps(obj).encode()
  width = int(np.max(_allgather(np.int64(len(text)))))
  buf = np.zeros((width,), np.uint8)
  buf[:len(text)] = np.frombuffer(text, np.uint8)
  return [json.loads(bytes(row).rstrip(b"\0").decode() or "null")
          for row in _allgather(buf).reshape(-1, width)]
