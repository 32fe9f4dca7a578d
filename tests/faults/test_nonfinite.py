"""NaN/Inf at step k (docs/reliability.md, fault 5): the run stops naming
step k, the last good checkpoint is intact and finite, and a restart with a
lower lr continues from it.

``--config.debug_nonfinite_at_step=k`` (vgg_jax/fault_injection.py) makes
the k-th batch NaN, so the k-th loss is the first non-finite one.
"""

import pathlib
import re
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import _fault_helpers as H  # noqa: E402  pylint: disable=g-import-not-at-top

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("k", [10])
def test_nan_at_step_k_stops_naming_k_and_a_lower_lr_resumes(tmp_path, k):
  data_dir = H.tiny_fashion_mnist(tmp_path / "fmnist")
  workdir = tmp_path / "wd"
  every = 4  # checkpoint interval of the tiny run
  proc = H.run(workdir, H.tiny_flags(data_dir, debug_nonfinite_at_step=k))
  out = proc.stdout + proc.stderr
  assert proc.returncode != 0
  assert re.search(rf"NaN or Inf at step {k}\b", out), out[-3000:]
  last_good = (k - 1) // every * every  # the last save before step k
  assert f"last good checkpoint ({last_good})" in out
  committed = H.committed_steps(workdir)
  assert committed and max(committed) == last_good, committed
  state = H.raw_checkpoint(workdir, last_good)
  assert all(np.isfinite(v).all() for v in state.values()
             if np.issubdtype(v.dtype, np.floating))
  # No line logged at or after step k claims a finite loss.
  for line in H.metrics_lines(workdir):
    if line["kind"] == "train" and line["step"] >= k:
      assert not np.isfinite(line["train_loss"]), line

  # The restart: a lower lr, no injected fault, same workdir.
  proc = H.run(workdir, H.tiny_flags(data_dir, lr=0.01))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (f"resuming from the workdir's checkpoint at step {last_good}"
          in proc.stderr)
  lines = H.metrics_lines(workdir)
  after = [l for l in lines if l["kind"] == "train" and l["step"] > last_good]
  assert after and all(np.isfinite(l["train_loss"]) for l in after)
  assert all(0 < l["lr"] <= 0.01 for l in after)  # the new, lower lr
  before = [l for l in lines if l["kind"] == "train" and l["step"] <= last_good]
  assert max(l["lr"] for l in before) > 0.01  # the first run's higher lr
  final = H.raw_checkpoint(workdir, 24)
  assert all(np.isfinite(v).all() for v in final.values()
             if np.issubdtype(v.dtype, np.floating))
  H.report("nonfinite", faults_injected=1, runs_survived=1, step=k,
           resumed_from=last_good)
