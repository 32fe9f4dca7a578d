"""Where the training step's time goes: XLA:CPU op time from a profile.

    python benchmarks/step_profile.py --model D --batch 8 --conv-impl auto
    python benchmarks/step_profile.py --model A --image-size 32 \\
        --width-mult 0.1875 --fc-width 512 --head-window 1 --in-channels 1 \\
        --num-classes 10 --batch 128 --conv-impl im2col

Builds the step as benchmarks/train_step.py does (``ours``' model, the
paper's SGD, ``train.make_train_step``), runs a few steps, traces ``--steps``
more with ``jax.profiler.trace``, and sums the duration of every XLA op in
the trace (read with TensorFlow's xplane proto, which the project's
TensorFlow install carries) per step: by op kind (the fusion name without
its number: ``ynn_fusion`` is a YNNPACK matrix product or convolution,
``convolution`` an Eigen one) and the largest single ops.  Op times are
summed over XLA's threads, so on 2 cores they may add up to more than the
wall time.  Prints both tables; ``--output`` writes JSON.  Note: Eigen's
convolutions run inside their thunk and show under their own names.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import re
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import train_step  # pylint: disable=wrong-import-position  (sets XLA's options, as the commands do)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

_SKIP = ("ThunkExecutor", "ThreadpoolListener")  # containers and markers


def op_times(trace_dir: str, steps: int) -> collections.Counter:
  """Seconds per step of each XLA op name in the trace (all threads)."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  (path,) = pathlib.Path(trace_dir).rglob("*.xplane.pb")
  space = xplane_pb2.XSpace()
  space.ParseFromString(path.read_bytes())
  times = collections.Counter()
  for plane in space.planes:
    names = {k: v.name for k, v in plane.event_metadata.items()}
    for line in plane.lines:
      if "XLA" not in line.name:  # XLA's threads, not Python's
        continue
      for event in line.events:
        name = names.get(event.metadata_id, "?")
        if not name.startswith(_SKIP):
          times[name] += event.duration_ps / 1e12 / steps
  return times


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="D")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--num-classes", type=int, default=1000)
  p.add_argument("--conv-impl", default="auto")
  train_step.add_net_args(p)
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--top", type=int, default=15)
  p.add_argument("--output", default=None)
  args = p.parse_args(argv)

  one, _ = train_step.build_ours(
      args.model, args.batch, args.image_size, "f32", args.conv_impl,
      args.num_classes, dict(train_step.net_kwargs(args),
                             in_channels=args.in_channels))
  for _ in range(2):  # compile and warm up
    one()
  with tempfile.TemporaryDirectory() as trace_dir:
    t0 = time.perf_counter()
    with jax.profiler.trace(trace_dir):
      for _ in range(args.steps):
        one()
    wall = (time.perf_counter() - t0) / args.steps
    times = op_times(trace_dir, args.steps)

  kinds = collections.Counter()
  for name, t in times.items():
    kinds[re.sub(r"\.\d+$", "", name)] += t
  total = sum(times.values())
  print(f"{args.model} batch {args.batch} at {args.image_size}px, "
        f"conv_impl={args.conv_impl}: {wall:.3f} s/step traced, "
        f"{total:.3f} s of XLA op time per step (all threads)")
  print(f"{'op kind':<28} {'s/step':>8} {'share':>6}")
  for name, t in kinds.most_common(args.top):
    print(f"{name:<28} {t:>8.3f} {t / total:>6.1%}")
  print(f"\n{'largest ops':<28} {'s/step':>8}")
  for name, t in times.most_common(args.top):
    print(f"{name:<28} {t:>8.3f}")
  if args.output:
    pathlib.Path(args.output).write_text(json.dumps({
        "args": vars(args), "traced_seconds_per_step": wall,
        "op_seconds_per_step": total, "by_kind": dict(kinds.most_common()),
        "by_op": dict(times.most_common()),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "cpu": train_step.cpu_description()}, indent=2))


if __name__ == "__main__":
  main()
