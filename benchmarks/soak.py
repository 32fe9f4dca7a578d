"""Soak: host memory (RSS) of the real training command over time.

    python benchmarks/soak.py [--steps 3000] [--eval_every 300] [--out FILE]

Two measurements (docs/reliability.md, "Load over time"):

1. Flat RSS after warm-up: ``python -m vgg_jax.main`` (the README's
   Fashion-MNIST config at 1/16 width, so that thousands of steps and many
   evaluations fit in minutes on a CPU) is sampled every 0.2 s from
   ``/proc/PID/status``; the report gives the RSS at the end of each
   evaluation cycle and the slope over the second half of the run (MB per
   1000 steps).  A leak per step or per evaluation shows as a positive slope.
2. Evaluation memory independent of the split's size: the same run on test
   splits of 1,000 and 10,000 images (IDX files cut from Fashion-MNIST),
   evaluating once; the peak RSS during evaluation minus the RSS just before
   it.  Evaluation streams batches and keeps only counts (training-time
   evaluation), so the two must be about equal.

Prints one JSON object (and writes it to ``--out``).  Numbers depend on the
machine; state it with them.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).absolute().parents[1]
sys.path.insert(0, str(REPO / "tests" / "faults"))
import _fault_helpers as H  # noqa: E402  pylint: disable=g-import-not-at-top


def rss_mb(pid: int) -> float | None:
  try:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  except OSError:
    return None
  return None


def sampled_run(workdir, flags, period=0.2):
  """Runs the command; returns [(time, rss MB, last trained step)]."""
  proc = H.start(workdir, flags)
  samples = []

  def sample():
    while proc.poll() is None:
      r = rss_mb(proc.pid)
      if r is not None:
        samples.append((time.time(), r))
      time.sleep(period)

  t = threading.Thread(target=sample, daemon=True)
  t.start()
  proc.wait()
  t.join()
  if proc.returncode:
    raise RuntimeError(H.output(proc)[-3000:])
  return samples, H.metrics_lines(workdir)


def _rss_at(samples, when):
  before = [r for t, r in samples if t <= when]
  return before[-1] if before else None


def _peak_between(samples, t0, t1):
  return max((r for t, r in samples if t0 <= t <= t1), default=None)


def flat_rss(tmp, steps, eval_every):
  data = H.tiny_fashion_mnist(tmp / "fm_soak", n_train=60000, n_test=2000)
  samples, lines = sampled_run(tmp / "wd_soak", H.tiny_flags(
      data, total_steps=steps, eval_every_steps=eval_every,
      log_every_steps=50, checkpoint_every_steps=eval_every,
      eval_batch_size=500, batch_size=64))
  evals = [l for l in lines if l["kind"] == "eval"]
  at_eval = [(l["step"], round(_rss_at(samples, l["time"]), 1))
             for l in evals]
  half = [(l["step"], _rss_at(samples, l["time"])) for l in lines
          if l["kind"] == "train" and l["step"] >= steps // 2]
  slope = None
  if len(half) >= 2:
    import numpy as np  # pylint: disable=g-import-not-at-top
    x, y = np.array(half, float).T
    slope = float(np.polyfit(x / 1000.0, y, 1)[0])
  return {"steps": steps, "eval_every": eval_every,
          "rss_mb_after_each_eval": at_eval,
          "rss_mb_peak": round(max(r for _, r in samples), 1),
          "slope_mb_per_1000_steps_second_half": (
              None if slope is None else round(slope, 2))}


def eval_memory(tmp, n_test):
  data = H.tiny_fashion_mnist(tmp / f"fm_eval{n_test}", n_train=640,
                              n_test=n_test)
  samples, lines = sampled_run(tmp / f"wd_eval{n_test}", H.tiny_flags(
      data, total_steps=20, eval_every_steps=20, log_every_steps=20,
      checkpoint_every_steps=20, eval_batch_size=500))
  train_end = [l["time"] for l in lines if l["kind"] == "train"][-1]
  eval_end = [l["time"] for l in lines if l["kind"] == "eval"][-1]
  before = _rss_at(samples, train_end)
  peak = _peak_between(samples, train_end, eval_end)
  return {"test_examples": n_test, "rss_mb_before_eval": round(before, 1),
          "rss_mb_peak_during_eval": round(peak, 1),
          "eval_growth_mb": round(peak - before, 1)}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=3000)
  p.add_argument("--eval_every", type=int, default=300)
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  with tempfile.TemporaryDirectory(prefix="vgg_soak_") as tmp:
    tmp = pathlib.Path(tmp)
    report = {"flat_rss": flat_rss(tmp, args.steps, args.eval_every),
              "eval_memory": [eval_memory(tmp, n) for n in (1000, 10000)]}
  text = json.dumps(report, indent=1)
  print(text)
  if args.out:
    pathlib.Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
  main()
