"""Does evaluation leak? Host memory over repeated evaluations of one split.

    python benchmarks/eval_memory.py [--test-images 1000,10000] [--repeats 6]
        [--batch 500] [--in-flight 4]

For each split size (the first N test images of Fashion-MNIST as IDX files),
one process builds the README job's net at 1/16 width and runs the
training-time evaluator (``config.evals.val``, the code path of every
evaluation during training) ``--repeats`` times on the same split, printing
after each: the resident memory (VmRSS), the process's peak so far (VmHWM),
and, with ``--trace``, the peak of Python/NumPy allocations
(``tracemalloc``).  A leak per evaluation shows as a peak that keeps rising
with the repeats; memory that only depends on the split's size shows in the
first evaluation and then stays flat.  ``--batch`` is the evaluation batch
and ``--in-flight`` the evaluator's ``sharding.DispatchBound`` interval (how
many batches may be in flight): what the first evaluation's memory depends
on besides the split (docs/reliability.md, "Load over time").

Prints a table and writes JSON (``--out``).  Memory does not depend on the
machine's load, unlike time; state the machine with the numbers anyway.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).absolute().parents[1]


def _status(field: str) -> float:
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith(field + ":"):
      return int(line.split()[1]) / 1024
  raise RuntimeError(f"no {field} in /proc/self/status")


def worker(n_test: int, repeats: int, trace: bool, workdir: str,
           batch: int = 500, in_flight: int = 4) -> list:
  """In a fresh process: one evaluator, ``repeats`` evaluations."""
  import vgg_jax.host_malloc  # noqa: F401  (as vgg_jax.main sets it up)
  sys.path.insert(0, str(REPO / "tests" / "faults"))
  import _fault_helpers as H  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from vgg_jax import input_pipeline, models, sharding, train  # pylint: disable=g-import-not-at-top
  from vgg_jax.eval import evaluators  # pylint: disable=g-import-not-at-top
  import tracemalloc  # pylint: disable=g-import-not-at-top

  bound_init = sharding.DispatchBound.__init__
  sharding.DispatchBound.__init__ = (
      lambda self, every=in_flight: bound_init(self, every))

  data = H.tiny_fashion_mnist(pathlib.Path(workdir) / f"fm{n_test}",
                              n_train=640, n_test=n_test)
  spec = importlib.util.spec_from_file_location(
      "fashion_mnist_config", REPO / "experiments" / "fashion_mnist.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.unlock()
  config.data.data_dir = str(data)
  config.model.width_mult = 0.0625
  config.model.fc_width = 32
  config.eval_batch_size = batch
  info = input_pipeline.get_source(config.data.source).info(config.data)
  model = models.create_model(**train.model_kwargs(config, info),
                              rngs=nnx.Rngs(0))
  convention = input_pipeline.input_convention(config.data)
  (evaluator,) = evaluators.evaluators_from_config(config)
  rows = [{"evaluation": 0, "rss_mb": _status("VmRSS"),
           "peak_rss_mb": _status("VmHWM")}]
  for r in range(1, repeats + 1):
    if trace:
      tracemalloc.start()
    out = evaluator.run(model, convention=convention)
    row = {"evaluation": r, "rss_mb": _status("VmRSS"),
           "peak_rss_mb": _status("VmHWM"), "examples": out["examples"]}
    if trace:
      row["python_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
      tracemalloc.stop()
    rows.append(row)
  return rows


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--test-images", default="1000,10000")
  ap.add_argument("--repeats", type=int, default=6)
  ap.add_argument("--trace", action="store_true",
                  help="also trace Python/NumPy allocations (slower)")
  ap.add_argument("--batch", type=int, default=500)
  ap.add_argument("--in-flight", type=int, default=4)
  ap.add_argument("--out", default="benchmarks/results/eval_memory.json")
  ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
  ap.add_argument("--workdir", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.worker:
    print(json.dumps(worker(args.worker, args.repeats, args.trace,
                            args.workdir, args.batch, args.in_flight)))
    return 0
  report = {"machine": {"cpu_count": __import__("os").cpu_count()},
            "splits": {}}
  with tempfile.TemporaryDirectory(prefix="vgg_eval_memory_") as tmp:
    for n in (int(x) for x in args.test_images.split(",")):
      cmd = [sys.executable, __file__, "--worker", str(n), "--repeats",
             str(args.repeats), "--workdir", tmp, "--batch", str(args.batch),
             "--in-flight", str(args.in_flight)] + (
                 ["--trace"] if args.trace else [])
      proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
      if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
      rows = json.loads(proc.stdout.strip().splitlines()[-1])
      report["splits"][n] = rows
      print(f"\n{n} test images")
      print(f"{'evaluation':>10} {'RSS MB':>8} {'peak MB':>8}"
            + (f" {'Python peak MB':>15}" if args.trace else ""))
      for row in rows:
        print(f"{row['evaluation']:>10} {row['rss_mb']:>8.1f} "
              f"{row['peak_rss_mb']:>8.1f}" + (
                  f" {row['python_peak_mb']:>15.1f}"
                  if "python_peak_mb" in row else ""))
      print(f"peak growth over evaluation 0's RSS: first evaluation "
            f"{rows[1]['peak_rss_mb'] - rows[0]['rss_mb']:.1f} MB, all "
            f"{rows[-1]['peak_rss_mb'] - rows[0]['rss_mb']:.1f} MB")
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=1) + "\n")
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
