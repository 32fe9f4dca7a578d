"""Compile the real training step for a TPU pod on a machine without one.

(One module of ~600 lines: the step builder, the report and the sweep share
the compile, the cache and the command line.)

    python -m vgg_jax.aot --config experiments/configD.py --topology v5e:4x4 \
        --config.model.dtype=bfloat16 --output d_v5e.json
    python -m vgg_jax.aot --config experiments/configE.py --topology v5p-128 \
        --sweep --cache_dir benchmarks/results/aot_cache
    python -m vgg_jax.aot --config experiments/configA.py --topology v5litepod-16

With ``libtpu`` importable (``pip install -e '.[tpu-aot]'``, or setup.sh's
``.libtpu`` directory, which this module finds by itself),
``jax.experimental.topologies`` describes the pod's chips and
``jax.jit(step).lower(abstract sharded args).compile()`` runs XLA's TPU
compiler here.  The step is the one training runs: ``vgg_jax.train``'s
model, optimiser, state, mesh, shardings (incl. ``shard_fc_kernels``),
donation and dtype, built from the same experiment config and overrides.

The report (``--output`` JSON; a summary on stdout), per chip:
  * XLA's memory analysis under XLA's names (``argument_size_in_bytes``,
    ``output_size_in_bytes``, ``alias_size_in_bytes``, ``temp_size_in_bytes``,
    ``generated_code_size_in_bytes``) and ``peak_bytes`` = argument + output
    - alias + temp + code, against the generation's HBM (``fits``);
  * parameter / optimiser / batch bytes counted from the shapes and
    shardings (a cross-check of XLA's argument size);
  * FLOPs and bytes accessed from XLA's cost analysis, and the model's own
    count (6 x forward MACs per image) for comparison;
  * every collective in the compiled HLO with its bytes;
  * a roofline: step time >= max(FLOPs / peak FLOP/s, the step's buffers
    moved once / HBM B/s, collective traffic / ICI B/s), with the chip
    peaks of ``vgg_jax.pods``.

A step that does not fit exits with status 3 (``EXIT_DOES_NOT_FIT``), its
report saying by how much: XLA's memory analysis when the program compiles,
or, when XLA's TPU compiler refuses it outright (``RESOURCE_EXHAUSTED``),
the sizes from the compiler's message (``refused_by_compiler``).

What it cannot know: the input pipeline (decoding and augmenting ~1-3K
images/s per chip must keep up: ``benchmarks/input_pipeline.py``), host
overheads (dispatch, logging, checkpoints, evaluation), how well XLA
overlaps communication with compute, and the real MFU (typically 40-60% of
the bf16 peak for convolutions); the roofline is a lower bound on time.
"""

from __future__ import annotations

import os
import pathlib
import sys

from vgg_jax import pods  # no jax import: may run before it

if __name__ == "__main__":
  pods.prepare_aot_environment()

# pylint: disable=g-import-not-at-top,wrong-import-position
import dataclasses
import json
import math
import re
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from vgg_jax import models as models_lib
from vgg_jax import sharding as sharding_lib
from vgg_jax import tasks as tasks_lib
from vgg_jax import train
from vgg_jax.models import count_macs, create_model, net_spec

# Datasets whose class count and size are known without reading them (the
# AOT check must not need the data).
# (imagenet2012_loc: the ILSVRC-2012 training images with boxes, Appendix A.)
KNOWN_DATASETS = {"imagenet2012": (1000, 1_281_167),
                  "imagenet2012_loc": (1000, 544_546),
                  "fashion_mnist": (10, 60_000)}

COLLECTIVE_OPS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
                  "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2,
                "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8,
                "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1}
MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes",
                 "alias_size_in_bytes", "temp_size_in_bytes",
                 "generated_code_size_in_bytes")


# Exit status of the single-point command when the step compiles (or XLA
# refuses it) but does not fit the chip's HBM; 2 is a usage error.  Kept in
# pods (no jax) so the pod launcher reads the same number.
EXIT_DOES_NOT_FIT = pods.EXIT_DOES_NOT_FIT


class LibtpuMissingError(RuntimeError):
  pass


def topology_devices(topology: str, num_slices: int = 1) -> list:
  """The compile-only devices of a TPU topology (needs libtpu).

  ``topology``: anything ``pods.parse_topology`` reads (``v5e:4x4``,
  ``v5litepod-16``, ``v4-32``).  A shape libtpu cannot build (``v5e:3x3``)
  is a ``ValueError`` that says so.
  """
  import importlib.util
  if importlib.util.find_spec("libtpu") is None:
    raise LibtpuMissingError(
        "libtpu is not installed: compiling for a TPU topology needs it. "
        "Install it with `pip install -e '.[tpu-aot]'` (or ./setup.sh, which "
        "puts it in .libtpu/, found automatically)")
  from jax.experimental import topologies
  chip, dims = pods.parse_topology(topology)
  if num_slices < 1:
    raise ValueError(f"num_slices must be >= 1, not {num_slices}")
  # Read once, by the first topology a process creates; without it libtpu
  # prints a warning (harmless).
  os.environ.setdefault("TPU_ACCELERATOR_TYPE",
                        chip.accelerator_type(math.prod(dims)))
  kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
  if chip.cores_per_chip > 1:
    # v4 and v5p run as one device per chip (megacore), as jax.devices()
    # lists them on the pod; libtpu's default for v4 is one per TensorCore.
    kwargs["chip_config_name"] = "megacore"
  padded = (tuple(dims) + (1, 1))[:3]
  if any(d < b for d, b in zip(padded, (2, 2, 1))):
    # libtpu assumes hosts of 2x2x1 chips; a slice smaller than one such
    # host (v5litepod-1, v6e:1x1) is one host of that size.
    kwargs["chips_per_host_bounds"] = tuple(
        min(d, b) for d, b in zip(padded, (2, 2, 1)))
  name = pods.canonical_topology(topology)
  try:
    desc = topologies.get_topology_desc(topology_name=name, platform="tpu",
                                        **kwargs)
  except (jax.errors.JaxRuntimeError, RuntimeError, ValueError) as e:
    shapes = pods.slice_shapes(chip)
    raise ValueError(
        f"libtpu cannot build the TPU topology {name!r}"
        f"{f' x {num_slices} slices' if num_slices > 1 else ''}: "
        f"{str(e).strip().splitlines()[0][:300]}. {chip.generation} slices "
        f"Cloud TPU offers: {', '.join(shapes.values())}") from e
  return list(desc.devices)


def ordered_devices(devices: list, model_axis: int) -> list:
  """``devices`` in the order ``jax.make_mesh`` would lay them out on a pod.

  Training calls ``sharding.make_mesh(model)``, i.e. ``jax.make_mesh``, which
  orders a TPU's devices along its physical torus; ``make_mesh(devices=...)``
  reshapes in the given order, so we give it that order.
  """
  from jax.experimental import mesh_utils
  n = len(devices)
  if model_axis < 1 or n % model_axis:
    raise ValueError(f"mesh_model_axis {model_axis} must divide the "
                     f"topology's {n} chips")
  try:
    grid = mesh_utils.create_device_mesh((n // model_axis, model_axis),
                                         devices=devices)
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.asarray(devices).reshape(n // model_axis, model_axis)
  return list(np.asarray(grid).reshape(-1))


def dataset_size(config, num_classes: int | None = None,
                 num_train_examples: int | None = None) -> tuple[int, int]:
  """(classes, training examples) of ``config.data`` without reading it."""
  known = KNOWN_DATASETS.get(config.data.name if config.data.source != "folder"
                             else "")
  if num_classes is None:
    if known is None:
      raise ValueError(
          f"the class count of data source {config.data.source!r} "
          f"{config.data.name!r} is not known without reading the data: pass "
          "--num_classes (and --num_train_examples for the lr schedule)")
    num_classes = known[0]
  if num_train_examples is None:
    num_train_examples = known[1] if known else 1_281_167
  return num_classes, num_train_examples


def load_experiment(path: str | os.PathLike, arg: str | None = None):
  """``get_config(arg)`` of an experiment file (``experiments/configD.py``),
  as ``--config FILE[:ARG]`` loads it (without command-line overrides)."""
  import importlib.util
  path = pathlib.Path(path).resolve()
  root = str(path.parent.parent)  # experiment files import `experiments.*`
  if root not in sys.path:
    sys.path.insert(0, root)
  spec = importlib.util.spec_from_file_location(f"_aot_{path.stem}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg) if arg is not None else mod.get_config()


@dataclasses.dataclass
class BuiltStep:
  jitted: Any
  args: tuple  # abstract (state, metrics, batch), with shardings
  mesh: Any
  global_batch: int
  conv_impl: str
  model_kwargs: dict


def forward_macs(model_kwargs: dict, crop_size: int) -> int:
  """Multiply-accumulates of one training crop's forward pass, for the net
  training builds (``BuiltStep.model_kwargs``), pool rounding included."""
  kw = model_kwargs
  return count_macs(net_spec(kw["name"], width_mult=kw["width_mult"],
                             fc_width=kw["fc_width"],
                             head_window=kw.get("head_window"),
                             pool_rounding=kw.get("pool_rounding", "floor")),
                    crop_size, in_channels=kw["in_channels"],
                    num_classes=kw["num_classes"])


def build_step(config, devices: list, *, platform: str = "tpu",
               num_classes: int | None = None,
               num_train_examples: int | None = None) -> BuiltStep:
  """The training step of ``config`` over ``devices``, as training builds it.

  Mirrors ``train.train_and_evaluate``: ``create_model`` with
  ``models.model_kwargs_from_config`` and ``model_runtime_kwargs`` (conv_impl
  "auto" resolved for the target), ``train.make_optimizer``,
  ``train.create_train_state``, ``sharding.make_mesh(config.mesh_model_axis)``,
  ``sharding.param_shardings(state, mesh, shard_fc_kernels or None)``, the
  config's task (``tasks.get_task``: its metrics and its batch keys, shaped
  by ``task.batch_specs``), ``train.make_train_step`` (state and metrics
  donated).  The state is abstract (``jax.eval_shape``): nothing is
  allocated.
  """
  dtype = train.compute_dtype(config)
  classes, n_train = dataset_size(config, num_classes, num_train_examples)
  batch = int(config.batch_size)
  mesh = sharding_lib.make_mesh(
      config.mesh_model_axis,
      devices=ordered_devices(devices, config.mesh_model_axis))
  data_shards = sharding_lib.num_data_shards(mesh)
  if batch <= 0 or batch % data_shards:
    raise ValueError(f"batch_size {batch} is not divisible by the "
                     f"{data_shards} data-parallel chips; choose a multiple "
                     f"of {data_shards}")
  steps_per_epoch = max(1, n_train // batch)
  dur = lambda prefix, default=None: train.duration_steps(  # noqa: E731
      config, prefix, steps_per_epoch=steps_per_epoch, batch_size=batch,
      default=default)
  total_steps = dur("total") or 1
  tx = train.make_optimizer(config, total_steps=total_steps,
                            steps_per_epoch=steps_per_epoch,
                            warmup_steps=dur("warmup", 0))
  # "auto" picks by the backend that runs the step: the target's, not ours.
  # A CPU target gets the fixed im2col schedule ("autotune" too): timing
  # schedules here would measure this machine, not the target.
  conv_impl = config.model.conv_impl
  if conv_impl in ("auto", "autotune"):
    conv_impl = "im2col" if platform == "cpu" else "xla"
  channels = int(config.data.image_channels)
  # The one config -> model mapping (as training builds the net).
  kwargs = models_lib.model_kwargs_from_config(
      config.model, num_classes=classes, in_channels=channels)
  runtime = {**models_lib.model_runtime_kwargs(config.model, dtype=dtype),
             "conv_impl": conv_impl}
  task = tasks_lib.get_task(config)
  holder = {}

  def init():
    model = create_model(**kwargs, **runtime, rngs=nnx.Rngs(config.seed))
    holder["graphdef"], state = train.create_train_state(model, tx)
    return state

  abstract_state = jax.eval_shape(init)
  rule = sharding_lib.shard_fc_kernels if config.shard_fc_kernels else None
  shardings = sharding_lib.param_shardings(abstract_state, mesh, rule)
  state = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state, shardings)
  rep = sharding_lib.replicated(mesh)
  metrics = jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep),
      jax.eval_shape(lambda: train.init_metrics(task)))
  crop = int(config.data.crop_size)
  bsh = sharding_lib.batch_sharding(mesh)
  # What the input pipeline yields for the task's batch keys (the loop puts
  # exactly these on device): float32 images, int32 labels, ...
  batch_args = {
      k: jax.ShapeDtypeStruct(shape, dt, sharding=bsh)
      for k, (shape, dt) in task.batch_specs(
          batch, (crop, crop, channels)).items()}
  jitted = train.make_train_step(holder["graphdef"], tx, seed=config.seed,
                                 mesh=mesh, state_shardings=shardings,
                                 task=task)
  return BuiltStep(jitted, (state, metrics, batch_args), mesh, batch,
                   conv_impl, kwargs)


def _per_chip_bytes(tree) -> int:
  total = 0
  for leaf in jax.tree_util.tree_leaves(tree):
    shard = leaf.sharding.shard_shape(leaf.shape)
    total += math.prod(shard) * np.dtype(leaf.dtype).itemsize
  return total


def _element_bytes(shape_text: str) -> list[int]:
  """Bytes of each array in an HLO shape, e.g. ``(f32[3,3]{1,0}, bf16[8])``."""
  out = []
  for dt, dims in re.findall(r"\b([a-z]+[0-9a-z]*)\[([0-9,]*)\]", shape_text):
    if dt in _DTYPE_BYTES:
      n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
      out.append(n * _DTYPE_BYTES[dt])
  return out


def _group_size(line: str, default: int) -> int:
  """Devices per replica group of a collective's HLO line."""
  m = re.search(r"replica_groups=\{\{([0-9,]*)\}", line)
  if m:
    return len(m.group(1).split(","))
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line)  # iota form
  if m:
    return int(m.group(2))
  # Mesh form: replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0'}
  m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
  if m:
    sizes = dict(re.findall(r"'([^']+)'=(\d+)", m.group(1)))
    axes = re.findall(r"'([^']+)'", m.group(2))
    return math.prod(int(sizes[a]) for a in axes if a in sizes)
  return default


def collectives(hlo_text: str, num_devices: int) -> dict:
  """Collective ops of a compiled HLO module: count, bytes, ICI traffic.

  ``bytes`` is the size of each op's result per chip; ``ici_bytes`` what a
  ring algorithm sends per chip: all-reduce 2(n-1)/n x size, all-gather and
  reduce-scatter (n-1)/n x the larger side, all-to-all (n-1)/n, a permute
  its size.  Async pairs count once (at ``-start``, whose tuple holds the
  operand and the result for a gather or permute: the larger is counted).
  """
  out = {op: {"count": 0, "bytes": 0, "ici_bytes": 0.0}
         for op in COLLECTIVE_OPS}
  op_re = re.compile(r"=\s*(.*?)\s(" + "|".join(COLLECTIVE_OPS) +
                     r")(-start)?\(")
  for line in hlo_text.splitlines():
    m = op_re.search(line)
    if not m:
      continue
    shape, op = m.group(1), m.group(2)
    sizes = _element_bytes(shape)
    if m.group(3) and op in ("all-gather", "collective-permute"):
      size = max(sizes, default=0)
    else:
      size = sum(sizes)
    n = _group_size(line, num_devices)
    frac = (n - 1) / n if n > 1 else 0.0
    ici = {"all-reduce": 2 * frac * size, "collective-permute": size}.get(
        op, frac * size)
    out[op]["count"] += 1
    out[op]["bytes"] += size
    out[op]["ici_bytes"] += ici
  return {k: v for k, v in out.items() if v["count"]}


def roofline(chip: pods.Chip, *, flops: float, hbm_bytes: float,
             ici_bytes: float, global_batch: int,
             xla_bytes_accessed: float | None = None) -> dict:
  """Lower bounds on the step time from the chip's three peaks.

  ``hbm_bytes``: the least HBM traffic the step can have, every buffer of
  XLA's memory plan moved once (arguments read, outputs written,
  temporaries written and read).  XLA's cost analysis also gives "bytes
  accessed", the sum of every op's operands and results; on TPU many of
  those stay on chip, so it overstates the traffic (several-fold for these
  convolutions) and is reported as ``hbm_xla_bytes_s``, not used for the
  bound.
  """
  t_flops = flops / chip.bf16_flops_per_s
  t_hbm = hbm_bytes / chip.hbm_bytes_per_s
  t_ici = ici_bytes / chip.ici_bytes_per_s
  bound = max(t_flops, t_hbm, t_ici)
  limit = {t_flops: "compute", t_hbm: "hbm", t_ici: "ici"}[bound]
  out = {"compute_s": t_flops, "hbm_s": t_hbm, "ici_s": t_ici,
         "step_time_s": bound, "bound_by": limit,
         "images_per_s": global_batch / bound if bound else None,
         # Without overlap of communication and compute (pessimistic).
         "step_time_no_overlap_s": max(t_flops, t_hbm) + t_ici}
  if xla_bytes_accessed is not None:
    out["hbm_xla_bytes_s"] = xla_bytes_accessed / chip.hbm_bytes_per_s
  return out


# XLA's TPU compiler, when the program's buffers exceed the HBM it may use:
#   RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required
#   for HLO temporaries (210.14G) exceeds available HBM (15.75G).
# (G is GiB; "available" is the HBM less what the runtime reserves.)
_REFUSAL = re.compile(
    r"RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm|"
    r"RESOURCE_EXHAUSTED: Ran out of memory on HBM")
_REFUSAL_SIZES = re.compile(
    r"required for (?P<what>[\w ]+?) \((?P<need>[\d.]+)(?P<nu>[KMGT]?)\)"
    r" exceeds available HBM \((?P<have>[\d.]+)(?P<hu>[KMGT]?)\)")
_UNIT = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def compiler_refusal(message: str, chip: pods.Chip) -> dict | None:
  """``memory_per_chip`` for a program XLA refused as over the HBM (None if
  ``message`` is another error).  XLA's own sizes are kept when it gives
  them; its five memory fields are then unknown (None)."""
  if not _REFUSAL.search(message):
    return None
  out = {f: None for f in MEMORY_FIELDS}
  out.update(peak_bytes=None, hbm_bytes=chip.hbm_bytes,
             usable_hbm_bytes=chip.usable_hbm, fits=False,
             refused_by_compiler=True,
             compiler_message=message.strip().splitlines()[0][:500])
  m = _REFUSAL_SIZES.search(message)
  if m:
    out.update(
        compiler_required=m["what"],
        compiler_required_bytes=int(float(m["need"]) * _UNIT[m["nu"]]),
        compiler_available_bytes=int(float(m["have"]) * _UNIT[m["hu"]]))
  return out


def point_fits(memory: dict, chip: pods.Chip) -> bool:
  """A compiled step fits when XLA did not refuse it and its peak is within
  the HBM a program may use on ``chip`` (``pods.Chip.usable_hbm``: the
  chip's less the runtime's reserve).  The sweep recomputes it from a
  cached report's peak, so a correction of the chip table reaches old
  points too."""
  if memory.get("refused_by_compiler"):
    return False
  if memory.get("peak_bytes") is None:  # a report without a peak: its own
    return bool(memory.get("fits"))
  return memory["peak_bytes"] <= chip.usable_hbm


def analyze(config, topology: str, *, num_slices: int = 1,
            num_classes: int | None = None,
            num_train_examples: int | None = None,
            chip: pods.Chip | None = None, devices: list | None = None,
            keep_hlo: bool = False, on_compile=None) -> dict:
  """Compile ``config``'s training step for ``topology``; the report dict.

  ``topology="cpu"`` compiles for this machine's devices instead (then
  ``chip`` must give the peaks, e.g. measured ones).  ``on_compile()`` is
  called when the step is lowered, as XLA's compiler starts (the sweep's
  probes time the compiler from there).
  """
  if topology == "cpu":
    if chip is None:
      raise ValueError("topology 'cpu' needs the chip's peaks (chip=...)")
    devices = devices or jax.devices("cpu")
    platform = "cpu"
  else:
    table_chip, _ = pods.parse_topology(topology)
    chip = chip or table_chip
    devices = devices or topology_devices(topology, num_slices)
    platform = "tpu"
  t0 = time.perf_counter()
  built = build_step(config, devices, platform=platform,
                     num_classes=num_classes,
                     num_train_examples=num_train_examples)
  state, metrics, batch = built.args
  n = len(devices)
  kw = built.model_kwargs
  macs = forward_macs(kw, int(config.data.crop_size))
  report = {
      "topology": topology if topology == "cpu" else
                  pods.canonical_topology(topology),
      "num_slices": num_slices, "chips": n,
      "device_kind": devices[0].device_kind,
      "chip": dataclasses.asdict(chip),
      "mesh": {k: int(v) for k, v in built.mesh.shape.items()},
      "model": kw, "dtype": config.model.dtype,
      "conv_impl": built.conv_impl,
      "shard_fc_kernels": bool(config.shard_fc_kernels),
      "global_batch": built.global_batch,
      "batch_per_chip": built.global_batch / sharding_lib.num_data_shards(
          built.mesh),
      "image_size": int(config.data.crop_size),
      "counted_bytes_per_chip": {
          "params": _per_chip_bytes(state["params"]),
          "optimizer": _per_chip_bytes(state["opt_state"]),
          "model_state": _per_chip_bytes(state["rest"]),
          "step_and_metrics": _per_chip_bytes(state["step"]) +
                              _per_chip_bytes(metrics),
          "batch": _per_chip_bytes(batch)},
      "model_flops_per_step": 6 * macs * built.global_batch,
      "jax": jax.__version__,
  }
  try:
    lowered = built.jitted.lower(*built.args)
    if on_compile is not None:
      on_compile()
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    refusal = compiler_refusal(str(e), chip)
    if refusal is None:
      raise
    # XLA's TPU compiler refuses a program whose buffers exceed the HBM it
    # can use: that is the answer "does not fit", not a failure of the check.
    report.update(memory_per_chip=refusal, compile_s=time.perf_counter() - t0)
    return report
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  memory = {f: int(getattr(mem, f)) for f in MEMORY_FIELDS}
  memory["peak_bytes"] = (memory["argument_size_in_bytes"] +
                          memory["output_size_in_bytes"] -
                          memory["alias_size_in_bytes"] +
                          memory["temp_size_in_bytes"] +
                          memory["generated_code_size_in_bytes"])
  memory["hbm_bytes"] = chip.hbm_bytes
  memory["usable_hbm_bytes"] = chip.usable_hbm
  memory["fits"] = point_fits(memory, chip)
  memory["refused_by_compiler"] = False
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  cost = dict(cost or {})
  flops = float(cost.get("flops", 0.0))
  bytes_accessed = float(cost.get("bytes accessed", 0.0))
  hlo = compiled.as_text()
  coll = collectives(hlo, n)
  ici = sum(v["ici_bytes"] for v in coll.values())
  report.update({
      "memory_per_chip": memory,
      "flops_per_chip": flops,
      "flops_per_step": flops * n,
      "bytes_accessed_per_chip": bytes_accessed,
      "collectives_per_chip": coll,
      "roofline": roofline(
          chip, flops=flops, hbm_bytes=memory["argument_size_in_bytes"] +
          memory["output_size_in_bytes"] + 2 * memory["temp_size_in_bytes"],
          ici_bytes=ici, global_batch=built.global_batch,
          xla_bytes_accessed=bytes_accessed),
      "compile_s": compile_s,
  })
  if keep_hlo:
    report["hlo"] = hlo
  return report


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Atomic: a temp name, fsync, rename (never half a file under ``path``)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
  with open(tmp, "w") as f:
    f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _gib(b: float) -> str:
  if b < pods.GIB:  # small nets: 0.01 GiB would say little
    return f"{b / 2**20:.1f} MiB"
  return f"{b / pods.GIB:.2f} GiB"


def summary(r: dict) -> str:
  m = r["memory_per_chip"]
  slices = r.get("num_slices", 1)
  head = (f"{r['model']['name']} {r['dtype']} on {r['topology']}"
          f"{f' x {slices} slices' if slices > 1 else ''} "
          f"({r['chips']} chips, {r['device_kind']}), mesh {r['mesh']}, "
          f"global batch {r['global_batch']} ({r['batch_per_chip']:g}/chip), "
          f"FC sharding {'on' if r['shard_fc_kernels'] else 'off'}")
  if m.get("refused_by_compiler"):
    need = m.get("compiler_required_bytes")
    return "\n".join([
        head + f"; XLA's TPU compiler refused it after {r['compile_s']:.0f} s",
        "DOES NOT FIT: " + (
            f"{m['compiler_required']} alone need {_gib(need)} per chip, "
            f"the compiler may use {_gib(m['compiler_available_bytes'])} of "
            f"{_gib(m['hbm_bytes'])} HBM" if need is not None else
            m["compiler_message"]),
        "a smaller global batch, bfloat16 (--config.model.dtype=bfloat16) "
        "or FC sharding (--config.shard_fc_kernels=True "
        "--config.mesh_model_axis=N) needs less"])
  rf = r["roofline"]
  lines = [
      head + f"; compiled in {r['compile_s']:.0f} s",
      "per chip: " + ", ".join(f"{k} {_gib(m[k])}" for k in MEMORY_FIELDS),
      f"peak {_gib(m['peak_bytes'])} of the {_gib(m['usable_hbm_bytes'])} "
      f"a program may use ({_gib(m['hbm_bytes'])} HBM): "
      + ("fits" if m["fits"] else "DOES NOT FIT"),
      f"FLOPs/step {r['flops_per_step']:.3e} (model count "
      f"{r['model_flops_per_step']:.3e})",
      "collectives per chip: " + (", ".join(
          f"{k} x{v['count']} {v['bytes'] / 2**20:.1f} MiB"
          for k, v in r["collectives_per_chip"].items()) or "none"),
      f"roofline: >= {rf['step_time_s'] * 1e3:.3g} ms/step "
      f"({rf['bound_by']}-bound; compute {rf['compute_s'] * 1e3:.3g}, "
      f"HBM {rf['hbm_s'] * 1e3:.3g}, ICI {rf['ici_s'] * 1e3:.3g} ms) "
      f"-> <= {rf['images_per_s']:,.0f} img/s",
  ]
  return "\n".join(lines)


# ----------------------------------------------------------------------------
# Sweep: the largest global batch that fits (bisection, cached per point).


def point_key(config, topology: str, batch: int, num_slices: int = 1,
              **_) -> str:
  slices = f"x{num_slices}slices" if num_slices > 1 else ""
  return (f"{config.model.name}_{pods.canonical_topology(topology)}{slices}_"
          f"{config.model.dtype}_fc{int(bool(config.shard_fc_kernels))}"
          f"m{config.mesh_model_axis}_b{batch}").replace(":", "-")


def compile_point(config, topology: str, batch: int, cache_dir, **kw) -> dict:
  """``analyze`` at global batch ``batch``, cached as one JSON per point."""
  path = pathlib.Path(cache_dir) / (point_key(config, topology, batch, **kw) +
                                    ".json")
  if path.is_file():
    return json.loads(path.read_text())
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.batch_size = batch
  r = analyze(config, topology, **kw)
  write_json(path, r)
  return r


# XLA's TPU compiler refuses a program over the HBM within seconds (1-9 s
# for VGG-E on 2 cores) but takes minutes (50-350 s) to compile one that
# fits.  A probe compiles in a child process and stops it once the
# compiler has run ``probe_s`` without refusing: "passed" is then a
# cheap, not a certain, "fits".  The sweep bisects with probes and
# compiles only its answer in full; the answer counts when that compile
# fits and one step more was refused or did not fit (both certain).
# A probe child prints "compiling" once it has lowered the step: seconds to
# a couple of minutes on a 2-core machine.  One that has not by then is stuck.
_PROBE_SETUP_S = 600.0

_PROBE_CHILD = (
    "import os, pickle, sys, threading, time\n"
    "def _orphaned(ppid=os.getppid()):  # the sweep stopped: stop too\n"
    "  while os.getppid() == ppid:\n"
    "    time.sleep(1)\n"
    "  os._exit(1)\n"
    "threading.Thread(target=_orphaned, daemon=True).start()\n"
    "from vgg_jax import pods\n"
    "pods.prepare_aot_environment()\n"
    "from vgg_jax import aot\n"
    "with open(sys.argv[1], 'rb') as f:\n"
    "  config, topology, batch, cache_dir, kw = pickle.load(f)\n"
    "aot.compile_point(config, topology, batch, cache_dir,\n"
    "                  on_compile=lambda: print('compiling', flush=True), **kw)\n")


def probe_point(config, topology: str, batch: int, cache_dir, *,
                probe_s: float = 45.0, **kw) -> bool:
  """Does XLA's TPU compiler accept ``batch`` (per the HBM)?  Cheaply.

  A point compiled in full (cached) answers exactly.  Otherwise a child
  process compiles it: a refusal (or a full compile that ends within
  ``probe_s``) is cached as a full point; a compile still running after
  ``probe_s`` is stopped and recorded under ``cache_dir/probes/`` as
  passed (not a full point: the table never shows it).
  """
  import pickle
  import select
  import subprocess
  import tempfile
  cache_dir = pathlib.Path(cache_dir)
  chip = pods.parse_topology(topology)[0]
  key = point_key(config, topology, batch, **kw)
  full = cache_dir / (key + ".json")
  probe = cache_dir / "probes" / (key + ".json")
  for path in (full, probe):
    if path.is_file():
      r = json.loads(path.read_text())
      return bool(point_fits(r["memory_per_chip"], chip) if path == full
                  else r["passed"])
  with tempfile.NamedTemporaryFile(suffix=".pkl", delete=False) as f:
    pickle.dump((config, topology, batch, str(cache_dir), kw), f)
  t0 = time.perf_counter()
  # stderr to a file: libtpu's logging into a pipe read only at the end
  # could fill it and stop the child before it says "compiling".
  err = tempfile.TemporaryFile(mode="w+")
  proc = subprocess.Popen([sys.executable, "-c", _PROBE_CHILD, f.name],
                          stdout=subprocess.PIPE, stderr=err,
                          text=True, start_new_session=True)
  try:
    # "compiling" once lowered, or "" if it failed first; a child stuck
    # before that (lowering, libtpu start) is stopped and reported below.
    ready, _, _ = select.select([proc.stdout], [], [], _PROBE_SETUP_S)
    line = proc.stdout.readline() if ready else ""
    t_compile = time.perf_counter()
    if line.strip() == "compiling":
      try:
        proc.wait(timeout=probe_s)
      except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        write_json(probe, {"passed": True, "probe_s": probe_s,
                           "setup_s": t_compile - t0, "key": key})
        return True
    elif ready:  # it failed before compiling: let it finish its traceback
      try:
        proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        pass
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, 9)
      proc.wait()
    os.unlink(f.name)
    err.seek(0)
    err_text = err.read()[-3000:]
    err.close()
  if not full.is_file():
    why = (f"exit {proc.returncode}" if ready else
           f"stopped: not compiling {_PROBE_SETUP_S:g} s after starting")
    raise RuntimeError(f"probe of {key} failed ({why}): {err_text}")
  return point_fits(json.loads(full.read_text())["memory_per_chip"], chip)


def sweep(config, topology: str, cache_dir, *, step_per_chip: int = 8,
          start_per_chip: int = 64, max_per_chip: int = 8192,
          guess_per_chip: int | None = None, probe_s: float | None = None,
          candidates_per_chip=(), log=print, **kw) -> dict:
  """Largest global batch (a multiple of the data shards) known to fit.

  Per chip, in multiples of ``step_per_chip``: from ``guess_per_chip``
  (checked with one step more first) or ``start_per_chip``, doubles or
  halves until the boundary is bracketed, then bisects.  With ``probe_s``
  the bracketing uses ``probe_point``, and a candidate one step below a
  known failure is compiled in full; the result holds when the largest
  fitting batch is a full compile and one step more does not fit.

  The peak need not grow with the batch: XLA schedules and rematerialises
  against the HBM, and v5p's compiler turns some batches into a peak over
  the HBM where a larger batch stays under it (D in f32 on v5p-128: 872 per
  chip fits, 880 does not, 1,408 does).  So after the bisection every
  ``candidates_per_chip`` above its answer (other cells' answers on the
  same chip and dtype) is compiled in full, largest first; one that fits
  moves the search there (one step more is checked, then doubling and
  bisection as before).  Above a failure only full compiles count.  The
  answer is then the largest batch known to fit with one step more not
  fitting; a larger one may still fit between failures, which only a
  compile of every step could rule out.  ``failing_below_max`` lists the
  failures under the answer.
  """
  chip, dims = pods.parse_topology(topology)
  chips = math.prod(dims) * kw.get("num_slices", 1)
  shards = chips // config.mesh_model_axis
  step = step_per_chip
  rnd = lambda x: max(step, int(x) // step * step)  # noqa: E731
  tried, passed, failed, verified = {}, set(), set(), set()
  probing, wrong_passes = probe_s is not None, 0
  # Batches whose next step is checked before doubling from them.
  anchors = {rnd(guess_per_chip)} if guess_per_chip else set()
  candidates = {rnd(c) for c in candidates_per_chip if c}
  candidates_done = set()

  def full(x: int) -> bool:
    r = compile_point(config, topology, x * shards, cache_dir, **kw)
    tried[x] = r
    m = r["memory_per_chip"]
    peak = ("refused by XLA's compiler" if m.get("refused_by_compiler")
            else f"peak {_gib(m['peak_bytes'])}")
    fits = point_fits(m, chip)
    if fits:
      verified.add(x)
    log(f"  {point_key(config, topology, x * shards, **kw)}: {peak} of "
        f"{_gib(chip.usable_hbm)} -> {'fits' if fits else 'does not fit'}")
    return fits

  def counted(x: int) -> bool:  # a pass lo_hi takes: see there
    return x in verified or x < min(failed, default=math.inf)

  def check(x: int) -> bool:
    if x in failed:
      return False
    if x in passed and counted(x):
      return True
    hi = min(failed, default=None)
    if not probing or (hi is not None and x + step >= hi):
      ok = full(x)  # a candidate answer, or above a failure: for real
    else:
      ok = probe_point(config, topology, x * shards, cache_dir,
                       probe_s=probe_s, **kw)
      log(f"  {point_key(config, topology, x * shards, **kw)}: probe "
          f"{'passed' if ok else 'refused'}")
    (passed if ok else failed).add(x)
    return ok

  def lo_hi():
    # The largest pass that counts (a full compile that fits, or a probe
    # below every failure), and the first failure above it.
    lo = max((x for x in passed - failed if counted(x)), default=0)
    hi = min((x for x in failed if x > lo), default=None)
    return lo, hi

  # Resume: what the cache already knows about this cell (full compiles,
  # probes) brackets the search before anything is compiled.
  prefix = point_key(config, topology, 0, **kw)[:-1]
  for path in sorted(pathlib.Path(cache_dir).glob(prefix + "*.json")) + \
      sorted(pathlib.Path(cache_dir, "probes").glob(prefix + "*.json")):
    batch = path.name[len(prefix):-len(".json")]
    if not batch.isdigit() or int(batch) % shards:
      continue
    x, r = int(batch) // shards, json.loads(path.read_text())
    if path.parent.name == "probes":
      if probe_s is not None and x not in failed:
        passed.add(x)
    else:
      tried[x] = r
      fits = point_fits(r["memory_per_chip"], chip)
      (passed if fits else failed).add(x)
      if fits:
        verified.add(x)

  x = min(max_per_chip, rnd(guess_per_chip or start_per_chip))
  lo, hi = lo_hi()
  if guess_per_chip and lo < x < (hi or math.inf):
    if x + step < min(hi or math.inf, max_per_chip + 1):
      check(x + step)  # a refusal one step above a good guess is cheap
    check(x)
  elif not passed and not failed:
    check(x)
  while True:
    lo, hi = lo_hi()
    if hi is None and lo < max_per_chip:  # bracket upwards
      if lo in anchors and lo + step not in failed:
        check(lo + step)
      else:
        check(min(max_per_chip, rnd(2 * lo)))
    elif hi is not None and lo == 0 and hi > step:  # bracket downwards
      check(rnd(hi // 2))
    elif hi is not None and hi - lo > step:  # bisect
      check(rnd((lo + hi) // 2))
    elif lo and lo not in verified:  # the answer, compiled in full
      if not full(lo):
        # The probe passed; the full compile says no: XLA compiled it and
        # its peak is over the HBM (seen on v5p, whose compiler does not
        # refuse near the limit).  Once may be a slow refusal; twice,
        # probes cannot see this cell's limit: bisect what remains with
        # full compiles, from the largest verified fit (not a step-by-step
        # descent).
        failed.add(lo)
        wrong_passes += 1
        if wrong_passes >= 2:
          passed.intersection_update(verified)
          probing = False
    else:  # a larger batch another cell fits?
      up = [c for c in candidates - candidates_done
            if lo < c <= max_per_chip and c not in failed]
      if not up:
        break
      c = max(up)
      candidates_done.add(c)
      anchors.add(c)
      log(f"  {c}/chip fits in another cell: compiling it")
      (passed if full(c) else failed).add(c)
  lo, hi = lo_hi()
  best = tried.get(lo)
  return {"net": config.model.name, "topology": pods.canonical_topology(
      topology), "dtype": config.model.dtype,
      "shard_fc_kernels": bool(config.shard_fc_kernels),
      "mesh_model_axis": int(config.mesh_model_axis),
      "max_global_batch": lo * shards, "max_batch_per_chip": lo,
      "first_failing_global_batch": hi * shards if hi else None,
      "failing_below_max": sorted(x * shards for x in failed if x < lo),
      "step_per_chip": step_per_chip, "at_max": best,
      "points": sorted(k * shards for k in passed | failed)}


# ----------------------------------------------------------------------------
# Command line.


def main(argv=None):
  from absl import app, flags
  from ml_collections import config_flags
  flags_ = flags.FLAGS
  config_flags.DEFINE_config_file(
      "config", None, "Experiment config file (experiments/*.py[:stage]); "
      "override fields with --config.field=value as for vgg_jax.main.",
      lock_config=True)
  flags.DEFINE_string("topology", None, "TPU topology, GENERATION:AxB[xC] "
                      "(v4:2x2x4, v5e:16x16, v5p:4x4x4, v6e:8x8) or a Cloud "
                      "TPU accelerator type (v5litepod-16, v4-32, v5p-8, "
                      "v6e-256).")
  flags.DEFINE_integer("num_slices", 1, "Slices (multislice), if libtpu "
                       "supports it for this generation.")
  flags.DEFINE_integer("num_classes", None, "Class count when the dataset "
                       "is not imagenet2012/fashion_mnist.")
  flags.DEFINE_integer("num_train_examples", None, "Training-set size "
                       "(only the lr schedule's length depends on it).")
  flags.DEFINE_string("output", None, "Write the report (JSON) here.")
  flags.DEFINE_bool("sweep", False, "Find the largest global batch that "
                    "fits (bisection); needs --cache_dir.")
  flags.DEFINE_string("cache_dir", "benchmarks/results/aot_cache",
                      "Sweep: one JSON per compiled point (resumable).")
  flags.DEFINE_integer("step_per_chip", 8, "Sweep resolution, images/chip.")
  flags.DEFINE_float("probe_s", 45.0, "Sweep: bisect with probes, a compile "
                     "XLA has not refused after this many seconds passing "
                     "(the answer is compiled in full); 0: every point in "
                     "full.")
  flags.DEFINE_integer("guess_per_chip", None, "Sweep: a first guess (e.g. "
                       "a neighbouring net's answer).")
  flags.DEFINE_list("candidates_per_chip", [], "Sweep: batches per chip "
                    "other cells fit (e.g. 1408,3072), compiled in full "
                    "after the bisection when above its answer (XLA's peak "
                    "is not monotone in the batch on v5p).")
  flags.mark_flags_as_required(["config", "topology"])

  def run(_):
    config = flags_.config
    try:
      pods.parse_topology(flags_.topology)
      kw = dict(num_slices=flags_.num_slices, num_classes=flags_.num_classes,
                num_train_examples=flags_.num_train_examples)
      if flags_.sweep:
        result = sweep(config, flags_.topology, flags_.cache_dir,
                       step_per_chip=flags_.step_per_chip,
                       probe_s=flags_.probe_s or None,
                       guess_per_chip=flags_.guess_per_chip,
                       candidates_per_chip=[
                           int(c) for c in flags_.candidates_per_chip],
                       **kw)
        print(f"largest global batch that fits: "
              f"{result['max_global_batch']} "
              f"({result['max_batch_per_chip']}/chip; "
              f"{result['first_failing_global_batch']} does not fit)")
        if result["at_max"]:
          print(summary(result["at_max"]))
      else:
        result = analyze(config, flags_.topology, **kw)
        print(summary(result))
    except (ValueError, LibtpuMissingError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    if flags_.output:
      write_json(flags_.output, result)
      print(f"wrote {flags_.output}")
    if not flags_.sweep and not result["memory_per_chip"]["fits"]:
      return EXIT_DOES_NOT_FIT  # so a preflight stops before the pod-hour
    return 0

  app.run(lambda a: sys.exit(run(a)), argv=argv)


if __name__ == "__main__":
  main()
