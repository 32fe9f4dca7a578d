"""``conv_impl="autotune"``: each convolution's schedule chosen by timing.

Which rewrite of a convolution is fastest (``models/conv.py``: im2col, its
rematerialised form, rows, taps, or XLA's own convolution) depends on the
layer's shape and on the CPU: im2col was 1.7x Keras on an AVX2 Zen 3 and lost
its lead on an AVX-512 Zen 4.  So the choice is measured where the step runs.
When a step is traced, every plain 2-D convolution looks its shape up
(input and kernel shapes, strides, padding, dtypes) in

1. this process's memo, then
2. an on-disk cache keyed by the machine (CPU model and flags, core count,
   backend and device kind, jax/jaxlib versions, ``XLA_FLAGS``): one JSON
   file per machine key under ``$VGG_JAX_CONV_CACHE_DIR``, by default
   ``$XDG_CACHE_HOME/vgg_jax`` (``~/.cache/vgg_jax``), written atomically;
   a file that cannot be read or belongs to another machine is ignored
   with a warning (and rewritten on the next tuned shape);
3. and otherwise times every schedule, forward and both gradients (what a
   training step runs), in interleaved rounds so that a load change on a
   shared machine hits all schedules alike, keeps the fastest median, and
   stores it with every schedule's time relative to im2col.

The timing runs on random arrays of the layer's shape, with the batch cut
to what gives about ``VGG_JAX_CONV_AUTOTUNE_FLOPS`` (1e11) floating-point
operations per call, in its own thread (outside the trace being built).
That is the step's own batch for VGG-D at batch 8 (at most 89 GFLOP a
call): timed at batch 1 (the earlier 3e9), Winograd's 16 products over 196
tiles of a 28x28 map ran 1.5x im2col's time, inside the batch-8 step 0.65x,
so batch-1 timings chose the wrong schedules.  A 1x1 stride-1 convolution
is a plain matrix product in every schedule but XLA's and is not timed
(im2col, i.e. the product).  A net like VGG-D has nine distinct 3x3 shapes:
the first compile on a new machine takes minutes longer, later ones none.  Every schedule computes the same
convolution (``tests/test_conv_schedules.py``), so a different choice on
another machine changes speed, not results beyond float rounding.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import math
import os
import pathlib
import platform
import statistics
import threading
import time
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from vgg_jax import files
from vgg_jax.models import conv as conv_lib

log = logging.getLogger("vgg_jax.conv_autotune")

CACHE_DIR_ENV = "VGG_JAX_CONV_CACHE_DIR"
FLOPS_ENV = "VGG_JAX_CONV_AUTOTUNE_FLOPS"
CACHE_FORMAT = 1
DEFAULT_FLOPS = 1e11
ROUNDS = 3
# A schedule whose warm-up call took this many times the best one's.
PRUNE_FACTOR = 1.5
MIN_TIMING_S = 0.05
MAX_CALLS = 50

_memo: dict[str, str] = {}
_decisions: dict[str, dict[str, Any]] = {}
_lock = threading.Lock()


def _cpuinfo() -> tuple[str, str]:
  """(model name with family/model/stepping, hash of the sorted CPU flags)
  from /proc/cpuinfo (a VM may show only "AMD EPYC" as the name; family 25
  model 17 is then a Zen 4)."""
  fields = {}
  try:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
      for line in f:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
  except OSError:
    pass
  name = fields.get("model name") or platform.processor() or platform.machine()
  ids = [f"{k} {fields[k]}" for k in ("cpu family", "model", "stepping")
         if fields.get(k)]
  if ids:
    name += f" ({', '.join(ids)})"
  flags = " ".join(sorted((fields.get("flags") or fields.get("Features")
                           or "").split()))
  return name, hashlib.sha256(flags.encode()).hexdigest()[:16]


def machine_key() -> dict[str, Any]:
  """What a timing depends on besides the convolution's own shape."""
  import jaxlib  # pylint: disable=g-import-not-at-top
  cpu, flags = _cpuinfo()
  device = jax.devices()[0]
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:
    cores = os.cpu_count()
  return {"cpu": cpu, "cpu_flags_sha256": flags, "cores": cores,
          "backend": f"{device.platform}: {device.device_kind}",
          "jax": jax.__version__, "jaxlib": jaxlib.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def cache_dir() -> pathlib.Path:
  if os.environ.get(CACHE_DIR_ENV):
    return pathlib.Path(os.environ[CACHE_DIR_ENV])
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "vgg_jax"


def cache_path(machine: dict[str, Any] | None = None) -> pathlib.Path:
  machine = machine or machine_key()
  digest = hashlib.sha256(json.dumps(machine, sort_keys=True).encode())
  return cache_dir() / f"conv_schedules-{digest.hexdigest()[:16]}.json"


def load_cache(path: pathlib.Path, machine: dict[str, Any]) -> dict:
  """The cached choices of ``machine``; {} (with a warning) for a file that
  is unreadable, malformed or another machine's."""
  if not path.exists():
    return {}
  try:
    data = json.loads(path.read_text())
    ok = (isinstance(data, dict) and data.get("format") == CACHE_FORMAT
          and data.get("machine") == machine
          and isinstance(data.get("entries"), dict)
          and all(isinstance(e, dict) and e.get("choice") in
                  conv_lib.SCHEDULES for e in data["entries"].values()))
    if not ok:
      raise ValueError("not a convolution-schedule cache of this machine "
                       f"(format {CACHE_FORMAT})")
    return data["entries"]
  except (OSError, ValueError) as e:
    warnings.warn(f"ignoring the convolution-schedule cache {path}: {e}; "
                  "the schedules will be timed again and the file "
                  "rewritten", RuntimeWarning, stacklevel=2)
    return {}


def store(path: pathlib.Path, machine: dict[str, Any], key: str,
          entry: dict[str, Any]) -> None:
  """Adds one entry to the cache file (re-read first: another process may
  have added its own), written atomically."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # warned when loaded
    entries = dict(load_cache(path, machine))
  entries[key] = entry
  text = json.dumps({"format": CACHE_FORMAT, "machine": machine,
                     "entries": entries}, indent=1, sort_keys=True)
  files.atomic_write(path, lambda f: f.write(text.encode()))


def _out_hw(lhs_shape, rhs_shape, strides, pads) -> tuple[int, int]:
  return tuple((lhs_shape[1 + a] + sum(pads[a]) - rhs_shape[a])
               // strides[a] + 1 for a in (0, 1))


def shape_key(lhs_shape, rhs_shape, strides, pads, dtype, rhs_dtype,
              preferred_element_type, precision) -> str:
  """The cache key of a convolution: kernel, strides, padding and dtypes
  exactly; the image size and the timed batch by half-octaves of output
  pixels per image and octaves of images.  Dense evaluation at many image
  sizes (paper §3.2) then times each layer a few times, not once per size:
  schedules' relative speeds change with the size gradually."""
  pet = None if preferred_element_type is None else jnp.dtype(
      preferred_element_type).name
  out_h, out_w = _out_hw(lhs_shape, rhs_shape, strides, pads)
  pixels = round(2 * math.log2(max(out_h * out_w, 1)))
  images = round(math.log2(tuning_batch(lhs_shape, rhs_shape, strides,
                                        pads)))
  return (f"w{'x'.join(map(str, rhs_shape))}:{jnp.dtype(rhs_dtype).name}"
          f"|x:{jnp.dtype(dtype).name}|s{strides[0]},{strides[1]}"
          f"|p{pads[0][0]},{pads[0][1]},{pads[1][0]},{pads[1][1]}"
          f"|pixels~2^{pixels / 2:g}|images~2^{images}"
          f"|out:{pet}|prec:{precision}")


def tuning_batch(lhs_shape, rhs_shape, strides, pads,
                 target_flops: float | None = None) -> int:
  """The batch the timing uses: enough images for ~target_flops per call
  (forward + both gradients), at most the layer's own batch."""
  if target_flops is None:
    target_flops = float(os.environ.get(FLOPS_ENV, DEFAULT_FLOPS))
  n = lhs_shape[0]
  kh, kw, c_in, c_out = rhs_shape
  out_h, out_w = _out_hw(lhs_shape, rhs_shape, strides, pads)
  per_image = 2 * 3 * out_h * out_w * kh * kw * c_in * c_out
  return int(min(n, max(1, math.ceil(target_flops / max(per_image, 1)))))


def time_schedules(lhs_shape, rhs_shape, strides, pads, dtype,
                   rhs_dtype=None, preferred_element_type=None,
                   precision=None, schedules: Sequence[str] = None,
                   rounds: int | None = None,
                   prune: float | None = PRUNE_FACTOR,
                   seed: int = 0) -> dict[str, list[float]]:
  """Seconds per call (forward + both gradients) of each schedule, timed in
  ``rounds`` interleaved rounds (each round runs every schedule once, in an
  order rotated per round) after one warm-up call each.  Runs in a thread
  of its own, so it may be called while another computation is traced."""
  schedules = tuple(schedules or conv_lib.SCHEDULES)
  rounds = ROUNDS if rounds is None else rounds
  rhs_dtype = rhs_dtype or dtype
  strides, pads = tuple(strides), tuple(tuple(p) for p in pads)

  def run() -> dict[str, list[float]]:
    kx, kw_, kg = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, lhs_shape, jnp.float32).astype(dtype)
    w = (jax.random.normal(kw_, rhs_shape, jnp.float32)
         / math.sqrt(math.prod(rhs_shape[:3]))).astype(rhs_dtype)
    y_shape = jax.eval_shape(
        lambda x, w: jax.lax.conv_general_dilated(
            x, w, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
            preferred_element_type=preferred_element_type), x, w)
    g = jax.random.normal(kg, y_shape.shape, jnp.float32).astype(
        y_shape.dtype)

    def step_of(name):
      fn = conv_lib.schedule(name)

      def step(x, w, g):
        y, vjp = jax.vjp(lambda x, w: fn(
            x, w, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=precision,
            preferred_element_type=preferred_element_type), x, w)
        return (y, *vjp(g))
      return jax.jit(step)

    steps, warm = {}, {}
    for name in schedules:
      try:
        steps[name] = step_of(name).lower(x, w, g).compile()
        t = time.perf_counter()
        jax.block_until_ready(steps[name](x, w, g))  # warm-up
        warm[name] = time.perf_counter() - t
      except Exception as e:  # pylint: disable=broad-except
        warnings.warn(f"convolution schedule {name!r} failed on "
                      f"{lhs_shape} x {rhs_shape} ({type(e).__name__}: "
                      f"{e}); not a candidate here", RuntimeWarning)
        steps.pop(name, None)
    if not warm:
      return {}
    # A schedule far behind on its warm-up call is not timed further (it
    # cannot win; this saves most of the tuning time).  im2col always is:
    # the reference the report's ratios are relative to.
    live = [n for n in warm if n == "im2col" or not prune
            or warm[n] <= prune * min(warm.values())]
    # Short calls are timed in groups of ~MIN_TIMING_S, so that one
    # scheduler hiccup on a shared machine is not the whole sample.
    calls = min(MAX_CALLS, max(1, math.ceil(
        MIN_TIMING_S / max(min(warm.values()), 1e-6))))
    times = {n: [] for n in live}
    for r in range(rounds):
      order = live[r % len(live):] + live[:r % len(live)]
      for name in order:
        t = time.perf_counter()
        for _ in range(calls):
          out = steps[name](x, w, g)
        jax.block_until_ready(out)
        times[name].append((time.perf_counter() - t) / calls)
    return times

  # Thread-local trace and mesh contexts stay with the caller's thread.
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    return pool.submit(run).result()


def summarise(times: dict[str, list[float]]) -> dict[str, Any]:
  medians = {n: statistics.median(t) for n, t in times.items() if t}
  # Ties (within 1%) go to the earlier schedule of conv.SCHEDULES.
  best_time = min(medians.values())
  choice = next(n for n in conv_lib.SCHEDULES if n in medians
                and medians[n] <= 1.01 * best_time)
  ref = medians.get("im2col", medians[choice])
  return {"choice": choice,
          "seconds_median": {n: round(m, 6) for n, m in medians.items()},
          "relative_to_im2col": {n: round(m / ref, 3)
                                 for n, m in medians.items()}}


def choose(lhs_shape, rhs_shape, strides, pads, dtype, rhs_dtype=None,
           preferred_element_type=None, precision=None) -> str:
  """The schedule for this convolution on this machine (memo, cache, or a
  timing, in that order)."""
  kh, kw = rhs_shape[:2]
  if kh == kw == 1 and tuple(strides) == (1, 1):
    return "im2col"  # a plain matrix product; nothing to choose
  if all(lhs_shape[1 + a] + sum(pads[a]) == rhs_shape[a] for a in (0, 1)):
    # One output position (FC1 as a 7x7 conv on a 7x7 map): the patch
    # tensor is the input reshaped, im2col is one product (XLA's conv was
    # 8x slower on it, taps 17x).
    return "im2col"
  rhs_dtype = rhs_dtype or dtype
  key = shape_key(lhs_shape, rhs_shape, strides, pads, dtype, rhs_dtype,
                  preferred_element_type, precision)
  with _lock:
    if key in _memo:
      return _memo[key]
    machine = machine_key()
    path = cache_path(machine)
    cached = load_cache(path, machine).get(key)
    if cached is not None:
      _memo[key] = cached["choice"]
      _decisions[key] = dict(cached, source="cache")
      return _memo[key]
    batch = tuning_batch(lhs_shape, rhs_shape, strides, pads)
    log.info("timing convolution schedules for %s (batch %d; once per "
             "machine, cached in %s)", key, batch, path)
    t0 = time.perf_counter()
    # Row- and tap-wise products only pay off for small kernels (AlexNet's
    # 11x11 would be 121 products).
    candidates = conv_lib.SCHEDULES if kh * kw <= 9 else (
        "im2col", "xla", "im2col_remat")
    times = time_schedules((batch, *lhs_shape[1:]), rhs_shape, strides, pads,
                           dtype, rhs_dtype, preferred_element_type,
                           precision, candidates)
    if not times:
      return "im2col"
    entry = dict(summarise(times), tuned_batch=batch,
                 tuned_input=list(lhs_shape[1:]),
                 tuning_seconds=round(time.perf_counter() - t0, 2))
    log.info("%s -> %s (%s)", key, entry["choice"],
             entry["relative_to_im2col"])
    try:
      store(path, machine, key, entry)
    except OSError as e:
      warnings.warn(f"could not write the convolution-schedule cache "
                    f"{path}: {e}; the choice holds for this process only",
                    RuntimeWarning)
    _memo[key] = entry["choice"]
    _decisions[key] = dict(entry, source="timed")
    return _memo[key]


def decisions() -> dict[str, dict[str, Any]]:
  """The choices this process made, by shape key (with their timings and
  whether they came from the cache): for benchmark reports."""
  with _lock:
    return {k: dict(v) for k, v in _decisions.items()}


def clear_memo() -> None:
  """Forgets this process's choices (the disk cache stays)."""
  with _lock:
    _memo.clear()
    _decisions.clear()


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding,
                         lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1,
                         precision=None, preferred_element_type=None,
                         **kwargs):
  """lax.conv_general_dilated with the schedule that timed fastest here."""
  if not conv_lib.is_plain(lhs, rhs, lhs_dilation, rhs_dilation,
                           dimension_numbers, feature_group_count, **kwargs):
    return conv_lib.schedule("xla")(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
        dimension_numbers, feature_group_count, precision=precision,
        preferred_element_type=preferred_element_type, **kwargs)
  strides = tuple(int(s) for s in window_strides)
  pads = conv_lib.explicit_padding(padding, lhs.shape[1:3], rhs.shape[:2],
                                   strides)
  name = choose(tuple(lhs.shape), tuple(rhs.shape), strides, pads, lhs.dtype,
                rhs.dtype, preferred_element_type,
                None if precision is None else str(precision))
  return conv_lib.schedule(name)(
      lhs, rhs, strides, pads, dimension_numbers=dimension_numbers,
      precision=precision, preferred_element_type=preferred_element_type)
