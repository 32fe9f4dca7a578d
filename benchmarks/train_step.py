"""How close the training step is to the machine's limit (issue: performance).

    python benchmarks/train_step.py --model D --batch 8 --image-size 224
    python benchmarks/train_step.py --model D --batch 256 --dtype bf16   # GPU

Measures, in one run on one machine:
  * images/s of the full training step (forward, backward, the paper's SGD
    update) after compilation, median of ``--steps`` timed steps;
  * achieved FLOP/s, counting 2 x 3 x multiply-accumulates per image (the
    forward MACs from the layer table; backward ~2x forward);
  * the machine's peak measured in the same run: the best of large XLA matrix
    products of the same dtype; the ratio is the model FLOP utilisation (MFU);
  * the same for Keras 3's ``keras.applications.VGG16/VGG19`` on the JAX
    backend (an independent implementation a user might pick instead), same
    batch, image size and optimiser (SGD momentum 0.9), and the ratio of ours
    to it.  Keras runs twice: in a process of its own with XLA's options as
    the user had them (what a Keras user gets: the ratio ``vs keras``), and
    in this process, with the XLA:CPU options vgg_jax sets
    (vgg_jax/xla_cpu.py; ``ratio_to_keras_same_xla_options``), which speed
    up any XLA convolution, Keras' too.

Prints a table and writes JSON (``--output``).  Ratios, not absolute times,
are what to compare across runs: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

# As vgg_jax.main does (for ours, Keras and the matmul peak alike): XLA:CPU's
# scratch memory reused, not page-faulted in afresh each step.
from vgg_jax import host_malloc  # pylint: disable=g-import-not-at-top
host_malloc.reuse_freed_memory()

# The user's environment, for Keras' own process; then, as vgg_jax.main does,
# XLA:CPU's options (before JAX starts its backend).
from vgg_jax import xla_cpu  # pylint: disable=g-import-not-at-top
USER_ENV = dict(os.environ)
XLA_CPU_OPTIONS_SET = xla_cpu.apply()

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vgg_jax import optim, sharding, train
from vgg_jax.models import conv_autotune, count_macs, create_model, net_spec

KERAS_APPS = {"D": "VGG16", "E": "VGG19"}
DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}


def _timed(fn, steps: int, warmup: int = 1) -> list[float]:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return times


def matmul_peak(dtype, sizes=(2048, 3072, 4096), repeats: int = 5) -> dict:
  """Best FLOP/s of an n x n x n XLA matrix product over sizes and repeats.

  The best, not the median: the peak is what the machine can do, and a
  disturbed repeat only lowers it (which would flatter the fraction).
  """
  best = {"flops_per_s": 0.0}
  for n in sizes:
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a: a @ a)
    t = min(_timed(lambda: f(a).block_until_ready(), repeats))
    rate = 2 * n ** 3 / t
    if rate > best["flops_per_s"]:
      best = {"flops_per_s": rate, "n": n, "seconds": t}
  return best


def build_ours(model_name, batch, size, dtype, conv_impl, num_classes,
               net=None):
  """vgg_jax's jitted training step (the paper's SGD) on one random batch.

  Returns ``(one, holder)``: ``one()`` runs a step and waits for it;
  ``holder["metrics"]`` holds the running metrics.  ``net``: create_model's
  width arguments (width_mult, in_channels ...).
  """
  net = net or {}
  channels = net.get("in_channels", 3)
  model = create_model(model_name, num_classes=num_classes, rngs=nnx.Rngs(0),
                       init="glorot", dtype=DTYPES[dtype], conv_impl=conv_impl,
                       **net)
  tx = optim.sgd(1e-2)  # the paper's: momentum 0.9, coupled decay 5e-4
  graphdef, state = train.create_train_state(model, tx)
  del model
  mesh = sharding.make_mesh()
  state_sh = sharding.param_shardings(state, mesh)
  state = jax.device_put(state, state_sh)
  step = train.make_train_step(graphdef, tx, seed=0, mesh=mesh,
                               state_shardings=state_sh)
  rng = np.random.default_rng(0)
  batch_np = {"image": rng.normal(0, 60, (batch, size, size, channels)).astype(
      np.float32), "label": rng.integers(0, num_classes, batch, np.int32)}
  device_batch = sharding.shard_batch(batch_np, mesh)
  holder = {"state": state, "metrics": jax.device_put(
      train.init_metrics(), sharding.replicated(mesh))}

  def one():
    holder["state"], holder["metrics"] = step(holder["state"],
                                              holder["metrics"], device_batch)
    jax.block_until_ready(holder["metrics"]["loss_sum"])

  return one, holder


def add_net_args(p: argparse.ArgumentParser) -> None:
  """The width-reduced net's flags, e.g. the Fashion-MNIST net A: --model A
  --image-size 32 --width-mult 0.1875 --fc-width 512 --head-window 1
  --in-channels 1 --num-classes 10."""
  p.add_argument("--width-mult", type=float, default=1.0)
  p.add_argument("--fc-width", type=int, default=4096)
  p.add_argument("--head-window", type=int, default=None)
  p.add_argument("--in-channels", type=int, default=3)


def net_kwargs(args) -> dict:
  """create_model's width arguments from ``add_net_args``' flags (without
  in_channels)."""
  kw = {"width_mult": args.width_mult, "fc_width": args.fc_width}
  if args.head_window is not None:
    kw["head_window"] = args.head_window
  return kw


def ours(model_name, batch, size, dtype, steps, conv_impl, num_classes,
         net=None):
  """``net``: create_model's width arguments (width_mult, in_channels ...)."""
  one, holder = build_ours(model_name, batch, size, dtype, conv_impl,
                           num_classes, net)
  t0 = time.perf_counter()
  one()
  compile_s = time.perf_counter() - t0
  times = _timed(one, steps, warmup=1)
  loss = float(holder["metrics"]["loss_sum"] / holder["metrics"]["examples"])
  if not np.isfinite(loss):
    raise FloatingPointError(f"our step produced a non-finite loss {loss}")
  row = {"seconds_per_step": statistics.median(times), "all_seconds": times,
         **spread(times), "compile_and_first_step_s": compile_s,
         "conv_impl": conv_impl}
  if conv_impl in ("auto", "autotune"):
    # The schedule each conv shape got (and each schedule's time relative to
    # im2col when it was timed), so a reader sees what "auto" ran.
    row["conv_schedules"] = conv_autotune.decisions()
  return row


def spread(times: list[float]) -> dict:
  """Min / median / max step seconds: on a shared machine one number hides
  how much the load moved the step."""
  return {"seconds_min": min(times), "seconds_median": statistics.median(times),
          "seconds_max": max(times)}


def cpu_description() -> dict:
  """The CPU this ran on: model name and the vector extensions that decide
  which convolution schedule wins."""
  key = conv_autotune.machine_key()
  flags = set()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("flags"):
          flags = set(line.partition(":")[2].split())
          break
  except OSError:
    pass
  wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni",
            "amx_bf16", "amx_tile")
  return {"model": key["cpu"], "cores": key["cores"],
          "vector_flags": [f for f in wanted if f in flags]}


def keras_step(model_name, batch, size, dtype, steps, num_classes):
  import keras
  if dtype == "bf16":
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
  app = getattr(keras.applications, KERAS_APPS[model_name])
  model = app(weights=None, input_shape=(size, size, 3), classes=num_classes,
              classifier_activation=None)
  model.compile(optimizer=keras.optimizers.SGD(1e-2, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True), jit_compile=True)
  rng = np.random.default_rng(0)
  x = rng.normal(0, 60, (batch, size, size, 3)).astype(np.float32)
  y = rng.integers(0, num_classes, batch).astype(np.int32)
  t0 = time.perf_counter()
  model.train_on_batch(x, y)
  compile_s = time.perf_counter() - t0
  times = _timed(lambda: model.train_on_batch(x, y), steps, warmup=1)
  return {"seconds_per_step": statistics.median(times), "all_seconds": times,
          **spread(times), "compile_and_first_step_s": compile_s,
          "keras_version": keras.__version__, "app": KERAS_APPS[model_name]}


def keras_step_in_user_env(args) -> dict:
  """``keras_step`` in a process of its own, with the user's XLA options
  (none of vgg_jax's): the Keras a Keras user runs."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / "keras.json"
    cmd = [sys.executable, os.path.abspath(__file__), "--keras-only",
           "--model", args.model, "--batch", str(args.batch),
           "--image-size", str(args.image_size), "--dtype", args.dtype,
           "--steps", str(args.steps), "--num-classes", str(args.num_classes),
           "--output", str(out)]
    subprocess.run(cmd, env={**USER_ENV, xla_cpu.OFF: "0"}, check=True)
    row = json.loads(out.read_text())
  row["xla_flags"] = USER_ENV.get("XLA_FLAGS", "")
  return row


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="D")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--num-classes", type=int, default=1000)
  p.add_argument("--conv-impl", default="auto",
                 help="auto|autotune|xla|im2col|im2col_remat|rows|taps; "
                 "several comma-separated to compare")
  # A width-reduced net (Keras is then skipped).
  add_net_args(p)
  p.add_argument("--no-keras", action="store_true")
  p.add_argument("--output", default="benchmarks/results/train_step.json")
  # Internal: only Keras' step, as JSON to --output (keras_step_in_user_env).
  p.add_argument("--keras-only", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.keras_only:
    pathlib.Path(args.output).write_text(json.dumps(keras_step(
        args.model, args.batch, args.image_size, args.dtype, args.steps,
        args.num_classes)))
    return

  widths = net_kwargs(args)
  flops_per_image = 2 * 3 * count_macs(net_spec(args.model, **widths),
                                       args.image_size,
                                       in_channels=args.in_channels,
                                       num_classes=args.num_classes)
  net = dict(widths, in_channels=args.in_channels)
  flops_per_step = flops_per_image * args.batch
  peak = matmul_peak(DTYPES[args.dtype])
  rows = []

  def add(impl_name, r):
    s = r["seconds_per_step"]
    r.update(implementation=impl_name, images_per_s=args.batch / s,
             flops_per_s=flops_per_step / s,
             )
    rows.append(r)

  for impl in args.conv_impl.split(","):
    add(f"vgg_jax ({impl})", ours(args.model, args.batch, args.image_size,
                                  args.dtype, args.steps, impl,
                                  args.num_classes, net))
  full_size = (args.width_mult == 1.0 and args.fc_width == 4096 and
               args.head_window is None and args.in_channels == 3)
  if not args.no_keras and args.model in KERAS_APPS and full_size:
    add(f"keras {KERAS_APPS[args.model]}", keras_step_in_user_env(args))
    if XLA_CPU_OPTIONS_SET:
      add(f"keras {KERAS_APPS[args.model]} +opts",
          dict(keras_step(args.model, args.batch, args.image_size, args.dtype,
                          args.steps, args.num_classes),
               xla_flags=os.environ.get("XLA_FLAGS", "")))
  # A second peak measurement after the runs: if the machine was disturbed
  # the two differ, and the report says so.
  peak_after = matmul_peak(DTYPES[args.dtype])
  peak_used = max(peak["flops_per_s"], peak_after["flops_per_s"])
  for r in rows:
    # Against the higher of the two peak measurements (conservative).
    r["fraction_of_peak"] = r["flops_per_s"] / peak_used
    r["fraction_of_peak_fastest_step"] = (flops_per_step / r["seconds_min"]
                                          / peak_used)
  keras_rows = [r for r in rows if r["implementation"].startswith("keras")]
  ours_rows = [r for r in rows if r not in keras_rows]
  for r in ours_rows:
    if keras_rows:  # Keras as its users run it
      r["ratio_to_keras"] = r["images_per_s"] / keras_rows[0]["images_per_s"]
    if len(keras_rows) > 1:  # Keras given vgg_jax's XLA:CPU options too
      r["ratio_to_keras_same_xla_options"] = (r["images_per_s"]
                                              / keras_rows[1]["images_per_s"])

  device = jax.devices()[0]
  report = {
      "model": args.model, "net": net,
      "batch": args.batch,
      # vgg_jax.host_malloc (VGG_JAX_GLIBC_MALLOC=default turns it off).
      "glibc_malloc_tuned": host_malloc.reuse_freed_memory(),
      "image_size": args.image_size, "dtype": args.dtype,
      "flops_per_image": flops_per_image,
      "peak": peak, "peak_after": peak_after,
      "peak_used_flops_per_s": peak_used,
      "device": f"{device.platform}: {device.device_kind}",
      "cpu": cpu_description(),
      "device_count": jax.device_count(),
      # vgg_jax's rows (and the "+opts" Keras row) ran with these.
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "cpu_count": os.cpu_count(), "machine": platform.processor() or
      platform.machine(), "jax": jax.__version__, "rows": rows,
      "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
  }
  print(f"{args.model} batch {args.batch} at {args.image_size}px, "
        f"{args.dtype}, {report['device']} x{jax.device_count()}; "
        f"matmul peak {peak['flops_per_s'] / 1e9:.1f} GFLOP/s before, "
        f"{peak_after['flops_per_s'] / 1e9:.1f} after (the higher is used)")
  print(f"CPU: {report['cpu']['model']} ({report['cpu']['cores']} cores; "
        f"{' '.join(report['cpu']['vector_flags'])})")
  print(f"{'implementation':<22} {'s/step':>8} {'min-max':>13} {'img/s':>9} "
        f"{'GFLOP/s':>9} {'of peak':>8} {'vs keras':>9}")
  for r in rows:
    vs = f"{r['ratio_to_keras']:.2f}x" if "ratio_to_keras" in r else "-"
    if "ratio_to_keras_same_xla_options" in r:
      vs += f" ({r['ratio_to_keras_same_xla_options']:.2f}x)"
    span = f"{r['seconds_min']:.2f}-{r['seconds_max']:.2f}"
    print(f"{r['implementation']:<22} {r['seconds_per_step']:>8.3f} "
          f"{span:>13} {r['images_per_s']:>9.2f} "
          f"{r['flops_per_s'] / 1e9:>9.1f} "
          f"{r['fraction_of_peak']:>8.2f} {vs:>9}")
  if len(keras_rows) > 1:
    print("vs keras: against Keras in its own process with the user's XLA "
          "options; (in brackets) against Keras given vgg_jax's XLA:CPU "
          f"options too: {os.environ.get('XLA_FLAGS', '')}")
  if keras_rows:
    # The same ratio on the fastest and the slowest steps: how far the load
    # could have moved the median ratio.
    k = keras_rows[0]
    for r in ours_rows:
      r["ratio_to_keras_fastest_steps"] = k["seconds_min"] / r["seconds_min"]
      r["ratio_to_keras_slowest_steps"] = k["seconds_max"] / r["seconds_max"]
      print(f"{r['implementation']}: {r['ratio_to_keras_fastest_steps']:.2f}x"
            f" Keras on the fastest steps, "
            f"{r['ratio_to_keras_slowest_steps']:.2f}x on the slowest")
  out = pathlib.Path(args.output)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(report, indent=2))
  tmp.replace(out)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
