"""The AOT report's method, checked against the one step we can time here.

    python benchmarks/aot_cpu_check.py

``vgg_jax.aot`` predicts a TPU step's time from XLA's cost analysis and the
chip's published peaks; no TPU is at hand to compare with.  This runs the
same analysis (``aot.analyze(config, "cpu", chip=...)``: the same step, the
same FLOP and byte counts, the same roofline) for this machine's CPU, with
its peaks measured in this run (the best large matrix product, as
benchmarks/train_step.py measures it, and the best large array copy for
memory bandwidth), and sets the prediction beside the step time
benchmarks/train_step.py measured (benchmarks/results/train_step_D_b8_f32.json:
net D, batch 8, 224x224, float32, im2col convolutions).  The ratio measured
/ predicted is what a real step loses to what the roofline cannot see; on a
TPU expect the same kind of gap (MFU 40-60%).
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.numpy as jnp

ROOT = pathlib.Path(__file__).resolve().parent.parent
from vgg_jax import aot, pods  # noqa: E402  pylint: disable=wrong-import-position


def copy_bandwidth(n_bytes: int = 1 << 29, repeats: int = 5) -> float:
  """Best bytes/s of an XLA array copy (read + write) of ``n_bytes``."""
  x = jnp.ones((n_bytes // 4,), jnp.float32)
  # In place (donated): a fresh output would time the kernel's page faults.
  f = jax.jit(lambda a: a + 1.0, donate_argnums=0)
  x = f(x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    x = f(x).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n_bytes / best


def main():
  measured = json.loads((ROOT / "benchmarks/results/"
                         "train_step_D_b8_f32.json").read_text())
  row = next(r for r in measured["rows"]
             if r["implementation"] == "vgg_jax (im2col)")
  flops_peak = measured["peak_used_flops_per_s"]
  bw = copy_bandwidth()
  chip = pods.Chip("cpu", flops_peak, 0, bw, float("inf"), 1, "cpu",
                   "measured: matmul peak from train_step_D_b8_f32.json, "
                   "copy bandwidth in this run")
  config = aot.load_experiment(ROOT / "experiments" / "configD.py")
  with config.unlocked():
    config.batch_size = measured["batch"]
    config.model.dtype = "float32"
    config.model.conv_impl = "im2col"
  r = aot.analyze(config, "cpu", chip=chip, devices=jax.devices("cpu")[:1])
  rf = r["roofline"]
  out = {
      "predicted_step_s": rf["step_time_s"], "bound_by": rf["bound_by"],
      "predicted_compute_s": rf["compute_s"], "predicted_memory_s":
      rf["hbm_s"], "memory_s_from_xla_bytes_accessed": rf["hbm_xla_bytes_s"],
      "measured_step_s": row["seconds_per_step"],
      "measured_over_predicted": row["seconds_per_step"] / rf["step_time_s"],
      "xla_flops_per_step": r["flops_per_step"],
      "model_flops_per_step": r["model_flops_per_step"],
      "bytes_accessed_per_step": r["bytes_accessed_per_chip"],
      "matmul_peak_flops_per_s": flops_peak, "copy_bytes_per_s": bw,
      "memory_per_device": r["memory_per_chip"],
      "machine": "2-core CPU VM (shared)", "jax": jax.__version__,
      "command": "python benchmarks/aot_cpu_check.py",
  }
  aot.write_json(ROOT / "benchmarks/results/aot_cpu_check.json", out)
  print(json.dumps({k: v for k, v in out.items()
                    if k != "memory_per_device"}, indent=2))


if __name__ == "__main__":
  main()
