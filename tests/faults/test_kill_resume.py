"""SIGKILL at random moments (saves in flight included) and SIGTERM, then
resume: the final parameters, optimiser state and logged metrics are
bit-identical to those of an uninterrupted run; no half-written checkpoint
is ever restored (docs/reliability.md, faults 1 and 2).

The runs are the real command, ``python -m vgg_jax.main``, on a tiny
Fashion-MNIST (tests/faults/_fault_helpers.py).  Kill moments come from a
seeded generator (``VGG_JAX_FAULT_SEED`` changes it).
"""

import os
import pathlib
import random
import re
import signal
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import _fault_helpers as H  # noqa: E402  pylint: disable=g-import-not-at-top

pytestmark = pytest.mark.slow

# Wall-clock fields differ between any two runs; everything else is compared.
TIMING_FIELDS = ("time", "images_per_sec", "input_wait_share")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return H.tiny_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
  """The uninterrupted run."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  proc = H.run(workdir, H.tiny_flags(data_dir))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def _deterministic_log(workdir):
  return [{k: v for k, v in line.items() if k not in TIMING_FIELDS}
          for line in H.metrics_lines(workdir) if line["kind"] != "final"]


def assert_same_run(reference, workdir, step=24):
  """Every array of the final checkpoint (params, BatchStats, momentum, lr,
  update count, step), and every logged metric, bit-identical."""
  want, got = H.raw_checkpoint(reference, step), H.raw_checkpoint(workdir, step)
  assert sorted(want) == sorted(got)
  assert any("opt_state" in k for k in want)  # the optimiser state is compared
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert _deterministic_log(workdir) == _deterministic_log(reference)


def _incomplete_children(workdir):
  from vgg_jax import checkpointing  # pylint: disable=g-import-not-at-top
  d = pathlib.Path(workdir) / checkpointing.CHECKPOINT_DIR
  if not d.is_dir():
    return []
  return [p.name for p in d.iterdir()
          if p.name != checkpointing.INCOMPLETE_DIR and p.is_dir()
          and not (p.name.isdigit()
                   and (p / checkpointing.COMMIT_FILE).is_file())]


def test_sigkill_at_random_moments_then_resume_is_exact(reference, data_dir,
                                                        tmp_path):
  rng = random.Random(int(os.environ.get("VGG_JAX_FAULT_SEED", "0")))
  workdir = tmp_path / "killed"
  # A checkpoint every step (it does not change what is computed), so that
  # asynchronous saves are nearly always in flight when the kill comes.
  flags = H.tiny_flags(data_dir, checkpoint_every_steps=1)
  kills, mid_save_kills, resumed_from = 0, 0, []
  for attempt in range(2):
    before = H.trained_steps(workdir)
    proc = H.start(workdir, flags)
    if attempt == 0:
      # The first kill: the moment a save is seen in flight.
      moment = lambda: bool(_incomplete_children(workdir))  # noqa: E731
    else:
      moment = lambda: H.trained_steps(workdir) > before  # noqa: E731
    started = H.wait_for(moment, proc=proc, poll=0.005)
    if attempt:
      delay = rng.uniform(0.0, 0.8)
      H.wait_for(lambda: False, timeout=delay, proc=proc)
    if proc.poll() is None:
      in_flight = bool(_incomplete_children(workdir))
      H.kill(proc, signal.SIGKILL)
      proc.wait(timeout=60)
      kills += 1
      mid_save_kills += in_flight
    else:
      assert proc.returncode == 0, H.output(proc)[-3000:]
    out = H.output(proc)
    assert started or proc.returncode == 0, out[-3000:]
    resumed_from += [int(s) for s in re.findall(
        r"resuming from the workdir's checkpoint at step (\d+)", out)]
  proc = H.run(workdir, flags)
  assert proc.returncode == 0, proc.stderr[-3000:]
  resumed_from += [int(s) for s in re.findall(
      r"resuming from the workdir's checkpoint at step (\d+)", proc.stderr)]
  assert kills >= 1
  # Every restored checkpoint was complete when restored (the resumed run's
  # log names it, and a half-written one is never listed as a step).
  assert resumed_from, "no run resumed from a checkpoint"
  assert_same_run(reference, workdir)
  # Nothing half-written is left where a restart would look.
  assert not _incomplete_children(workdir)
  H.report("sigkill", faults_injected=kills, runs_survived=1,
           kills_with_a_save_in_flight=mid_save_kills,
           resumed_from=resumed_from)


def test_sigterm_stops_at_a_step_with_one_checkpoint_then_resumes_exactly(
    reference, data_dir, tmp_path):
  rng = random.Random(int(os.environ.get("VGG_JAX_FAULT_SEED", "0")) + 1)
  workdir = tmp_path / "preempted"
  flags = H.tiny_flags(data_dir)
  stops = []
  # 1: SIGTERM during start-up (the log file exists, nothing is trained):
  # the run takes one step, saves it, exits 0.
  # 2: SIGTERM at a random moment of training.
  for attempt in range(2):
    before = H.trained_steps(workdir)
    proc = H.start(workdir, flags)
    if attempt == 0:
      moment = lambda: (workdir / "log_host0.txt").exists()  # noqa: E731
    else:
      moment = lambda: H.trained_steps(workdir) > before  # noqa: E731
    assert H.wait_for(moment, proc=proc, poll=0.005), H.output(proc)[-3000:]
    if attempt:
      H.wait_for(lambda: False, timeout=rng.uniform(0.0, 0.5), proc=proc)
    committed_before = H.committed_steps(workdir)
    H.kill(proc, signal.SIGTERM)
    proc.wait(timeout=H.RUN_TIMEOUT)
    out = H.output(proc)
    assert proc.returncode == 0, out[-3000:]
    final = [l for l in H.metrics_lines(workdir) if l["kind"] == "final"][-1]
    stop = final["step"]
    if final["stopped_by"] == "total_steps":  # it had finished already
      break
    assert final["stopped_by"] == "preemption", final
    assert "SIGTERM received" in out
    # One checkpoint, at the step it stopped at, complete.
    new = sorted(set(H.committed_steps(workdir)) - set(committed_before))
    assert new[-1:] == [stop], (new, stop)
    assert not _incomplete_children(workdir)
    stops.append(stop)
  proc = H.run(workdir, flags)
  assert proc.returncode == 0, proc.stderr[-3000:]
  if stops:
    assert (f"resuming from the workdir's checkpoint at step {stops[-1]}"
            in proc.stderr)
  assert_same_run(reference, workdir)
  H.report("sigterm", faults_injected=len(stops), runs_survived=1,
           stopped_at=stops)
