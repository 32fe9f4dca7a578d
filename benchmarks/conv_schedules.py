"""Each convolution schedule's time per conv shape of a net, as ratios.

    python benchmarks/conv_schedules.py --model D --batch 8
    python benchmarks/conv_schedules.py --model A --image-size 32 \\
        --width-mult 0.1875 --in-channels 1 --batch 128

For every distinct conv layer shape of the net (paper Table 1's 3x3 layers;
the head's FCs are products, not timed), times every schedule of
``vgg_jax/models/conv.py`` forward and both gradients, in interleaved rounds
(each round runs every schedule once), exactly as ``conv_impl="autotune"``
does at compile time but without pruning and without the cache: the table a
reader needs to see why the autotune chose what it did on this machine.
Ratios to im2col in the same round are what to compare: on a shared machine
the absolute times move with the load.  Writes JSON (``--output``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from vgg_jax import host_malloc, xla_cpu  # pylint: disable=g-import-not-at-top
host_malloc.reuse_freed_memory()
xla_cpu.apply()  # as the commands run (VGG_JAX_XLA_CPU_FLAGS=0: without)

from vgg_jax.models import conv as conv_lib  # noqa: E402
from vgg_jax.models import conv_autotune, geometry, net_spec  # noqa: E402


def conv_shapes(spec, size: int, batch: int, in_channels: int):
  """(lhs shape, rhs shape, strides, pads, layer names) per distinct conv."""
  shapes, c_in = {}, in_channels
  for c in spec.convs:
    side = size
    strides = (c.stride, c.stride)
    pads = conv_lib.explicit_padding(
        c.padding if isinstance(c.padding, str) else
        ((c.padding, c.padding), (c.padding, c.padding)),
        (side, side), (c.kernel, c.kernel), strides)
    key = ((batch, side, side, c_in), (c.kernel, c.kernel, c_in, c.features),
           strides, pads)
    shapes.setdefault(key, []).append(c.name)
    c_in = c.features
    size = geometry.conv_out(side, c)
    if c.pool_after:
      size = geometry.pool_out(size, spec)
  return [(*k, names) for k, names in shapes.items()]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="D")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--width-mult", type=float, default=1.0)
  p.add_argument("--in-channels", type=int, default=3)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--output",
                 default="benchmarks/results/conv_schedules.json")
  args = p.parse_args(argv)
  spec = net_spec(args.model, width_mult=args.width_mult)
  rows = []
  print(f"{args.model} at {args.image_size}px, batch {args.batch}, "
        f"{args.dtype}; CPU: {conv_autotune.machine_key()['cpu']}")
  print(f"{'layers':<28} {'timed batch':>11}  " + "  ".join(
      f"{n:>12}" for n in conv_lib.SCHEDULES) + "  fastest")
  for lhs, rhs, strides, pads, names in conv_shapes(
      spec, args.image_size, args.batch, args.in_channels):
    if rhs[0] * rhs[1] == 1:
      continue
    batch = conv_autotune.tuning_batch(lhs, rhs, strides, pads)
    times = conv_autotune.time_schedules(
        (batch, *lhs[1:]), rhs, strides, pads, args.dtype,
        rounds=args.rounds, prune=None)
    summary = conv_autotune.summarise(times)
    rel = summary["relative_to_im2col"]
    rows.append({"layers": names, "input": list(lhs), "kernel": list(rhs),
                 "timed_batch": batch, "seconds": times, **summary})
    print(f"{','.join(names)[:28]:<28} {batch:>11}  " + "  ".join(
        f"{rel.get(n, float('nan')):>12.3f}" for n in conv_lib.SCHEDULES)
        + f"  {summary['choice']}", flush=True)
  report = {"model": args.model, "image_size": args.image_size,
            "batch": args.batch, "dtype": args.dtype,
            "machine": conv_autotune.machine_key(), "rows": rows,
            "command": " ".join(["conv_schedules.py"] + sys.argv[1:])}
  out = pathlib.Path(args.output)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(report, indent=1))
  tmp.replace(out)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
