"""What the first evaluation's memory depends on: split, batch, batches in flight.

    python benchmarks/eval_first_peak.py TEST_IMAGES [--batch 500] [--in-flight 4]

One row per invocation (a fresh process, so the first evaluation is the
first): the training-time evaluator (``config.evals.val``, the README job's
net at 1/16 width) on the first TEST_IMAGES Fashion-MNIST test images,
evaluated twice; prints the peak RSS growth of each evaluation over the RSS
before the first (MB) as JSON.  ``--in-flight`` sets ``DispatchBound``'s
interval (how many batches may be in flight).  Results and their reading:
docs/reliability.md ("Load over time").  Memory, not time: the machine's
load does not matter, but identical runs differ by tens of MB.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import sys
import tempfile

REPO = pathlib.Path(__file__).absolute().parents[1]


def _status(field: str) -> float:
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith(field + ":"):
      return int(line.split()[1]) / 1024
  raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("test_images", type=int)
  ap.add_argument("--batch", type=int, default=500)
  ap.add_argument("--in-flight", type=int, default=4)
  args = ap.parse_args()
  os.environ.setdefault("VGG_JAX_CONV_AUTOTUNE", "0")
  sys.path.insert(0, str(REPO))
  sys.path.insert(0, str(REPO / "tests" / "faults"))
  from vgg_jax import host_malloc  # pylint: disable=g-import-not-at-top
  host_malloc.reuse_freed_memory()  # as vgg_jax.main does
  import _fault_helpers as H  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from vgg_jax import input_pipeline, models, sharding, train  # pylint: disable=g-import-not-at-top
  from vgg_jax.eval import evaluators  # pylint: disable=g-import-not-at-top

  bound_init = sharding.DispatchBound.__init__
  sharding.DispatchBound.__init__ = (
      lambda self, every=4: bound_init(self, args.in_flight))
  data = H.tiny_fashion_mnist(pathlib.Path(tempfile.mkdtemp()) / "fm",
                              n_train=640, n_test=args.test_images)
  spec = importlib.util.spec_from_file_location(
      "fashion_mnist_config", REPO / "experiments" / "fashion_mnist.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.unlock()
  config.data.data_dir = str(data)
  config.model.width_mult = 0.0625
  config.model.fc_width = 32
  config.eval_batch_size = args.batch
  info = input_pipeline.get_source(config.data.source).info(config.data)
  model = models.create_model(**train.model_kwargs(config, info),
                              rngs=nnx.Rngs(0))
  convention = input_pipeline.input_convention(config.data)
  (evaluator,) = evaluators.evaluators_from_config(config)
  before = _status("VmRSS")
  peaks = []
  for _ in range(2):
    evaluator.run(model, convention=convention)
    peaks.append(round(_status("VmHWM") - before, 1))
  print(json.dumps({"test_images": args.test_images, "batch": args.batch,
                    "in_flight": args.in_flight,
                    "rss_mb_before": round(before, 1),
                    "peak_growth_mb_first_eval": peaks[0],
                    "peak_growth_mb_after_second": peaks[1]}))


if __name__ == "__main__":
  main()
