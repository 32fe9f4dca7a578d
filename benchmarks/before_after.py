"""Is a change slower? The step, input and evaluation benchmarks on two trees, interleaved.

    git worktree add --detach /tmp/before 0967a05      # the tree before the change
    python benchmarks/before_after.py --before /tmp/before --after . --rounds 3

Runs each benchmark's own script from each tree (``PYTHONPATH`` = that tree,
so each measures its own ``vgg_jax``), alternating before, after, before,
after... ``--rounds`` times, and compares the two trees on the median of their
rounds.  Interleaving is what makes the ratio honest on a shared machine: a
neighbour's load falls on both sides alike.  The input and evaluation
benchmarks already count CPU-seconds of their own process (robust to load);
the step benchmark is wall clock, hence the rounds.

Benchmarks (small enough for a 2-core CPU; each prints its own table):

- ``train_step.py``: the README main job's step (net A at 3/16 width, 32x32,
  batch 128, the im2col convolution), images/s;
- ``input_pipeline.py``: images per CPU-second of the training and
  evaluation transforms at 500x375 and of the Fashion-MNIST batches;
- ``evaluation.py``: CPU-seconds per image of the §3.2 protocols (centre,
  dense, multi-crop) on width-reduced D.

Writes JSON (``--out``): every round's numbers and, per metric, after/before
as "speed" (> 1: the after tree is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

# (name, script and arguments, {metric: (path into the JSON, higher_is_faster)})
BENCHMARKS = (
    ("train_step",
     ["benchmarks/train_step.py", "--model", "A", "--image-size", "32",
      "--width-mult", "0.1875", "--fc-width", "512", "--head-window", "1",
      "--in-channels", "1", "--num-classes", "10", "--batch", "128",
      "--steps", "30", "--conv-impl", "im2col", "--no-keras",
      "--output", "{out}"],
     {"step images/s": (("rows", 0, "images_per_s"), True)}),
    ("input_pipeline",
     ["benchmarks/input_pipeline.py", "--seconds", "2", "--out", "{out}"],
     {"train transform img/CPU-s (500x375)": (("rows", 0, "ours_train"), True),
      "eval transform img/CPU-s (500x375)": (("rows", 0, "ours_eval"), True),
      "grain train iterator img/CPU-s": (("grain_train_iterator_500x375",),
                                         True),
      "Fashion-MNIST batches img/CPU-s": (("fashion_mnist_train",), True)}),
    ("evaluation",
     ["benchmarks/evaluation.py", "--scales", "256,384", "--out", "{out}"],
     {f"{p} CPU-s/image": (("protocols", p, "cpu_s_per_image"), False)
      for p in ("centre", "dense", "multicrop")}),
)


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return float(tree)


def run_one(tree: pathlib.Path, script: list[str], out: pathlib.Path) -> dict:
  env = dict(os.environ, PYTHONPATH=str(tree))
  cmd = [sys.executable] + [a.format(out=out) for a in script]
  proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True,
                        text=True)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} in {tree} failed "
                       f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}")
  return json.loads(out.read_text())


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--before", required=True, type=pathlib.Path)
  ap.add_argument("--after", default=".", type=pathlib.Path)
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--only", default="",
                  help="comma-separated benchmark names (default: all)")
  ap.add_argument("--out", default="benchmarks/results/before_after.json")
  args = ap.parse_args(argv)
  trees = {"before": args.before.resolve(), "after": args.after.resolve()}
  for side, tree in trees.items():
    if not (tree / "vgg_jax").is_dir():
      ap.error(f"--{side} {tree} is not a vgg_jax checkout (no vgg_jax/)")
  only = set(filter(None, args.only.split(",")))
  report = {"before": str(trees["before"]), "after": str(trees["after"]),
            "rounds": args.rounds, "load_average": os.getloadavg(),
            "benchmarks": {}}
  with tempfile.TemporaryDirectory() as tmp:
    for name, script, metrics in BENCHMARKS:
      if only and name not in only:
        continue
      values = {side: {m: [] for m in metrics} for side in trees}
      for r in range(args.rounds):
        for side, tree in trees.items():
          out = pathlib.Path(tmp) / f"{name}_{side}_{r}.json"
          result = run_one(tree, script, out)
          for m, (path, _) in metrics.items():
            values[side][m].append(_get(result, path))
          print(f"  {name} round {r + 1} {side}: " + ", ".join(
              f"{m} {values[side][m][-1]:.4g}" for m in metrics), flush=True)
      rows = {}
      for m, (_, higher_is_faster) in metrics.items():
        b = statistics.median(values["before"][m])
        a = statistics.median(values["after"][m])
        rows[m] = {"before": values["before"][m], "after": values["after"][m],
                   "speed_after_over_before": a / b if higher_is_faster
                   else b / a}
      report["benchmarks"][name] = rows
  print(f"\n{'metric':<42} {'before':>10} {'after':>10} {'speed':>7}")
  for name, rows in report["benchmarks"].items():
    for m, row in rows.items():
      print(f"{m:<42} {statistics.median(row['before']):>10.4g} "
            f"{statistics.median(row['after']):>10.4g} "
            f"{row['speed_after_over_before']:>7.3f}")
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=2) + "\n")
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
