"""Two runs on one workdir (docs/reliability.md, fault 10): the second
refuses to start, naming the owner's host and pid; a lock left by a killed
run is taken over."""

import json
import pathlib
import signal
import socket
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import _fault_helpers as H  # noqa: E402  pylint: disable=g-import-not-at-top

from vgg_jax import workdir_lock  # noqa: E402

pytestmark = pytest.mark.slow


def test_second_run_refuses_and_a_stale_lock_is_taken_over(tmp_path):
  data_dir = H.tiny_fashion_mnist(tmp_path / "fmnist")
  workdir = tmp_path / "wd"
  lock = workdir_lock.lock_path(workdir)
  first = H.start(workdir, H.tiny_flags(data_dir, total_steps=10**6,
                                        checkpoint_every_steps=10**6,
                                        eval_every_steps=10**6))
  try:
    assert H.wait_for(lambda: workdir_lock.read_owner(lock).get("pid")
                      == first.pid, proc=first), H.output(first)[-3000:]
    config_before = (workdir / "config.json").read_bytes() if (
        workdir / "config.json").exists() else None
    second = H.run(workdir, H.tiny_flags(data_dir, total_steps=3))
    assert second.returncode != 0
    assert "is in use by another run" in second.stderr
    assert f"pid {first.pid}" in second.stderr
    assert f"host {socket.gethostname()}" in second.stderr
    assert first.poll() is None  # the first run goes on undisturbed
    if config_before is not None:
      assert (workdir / "config.json").read_bytes() == config_before
  finally:
    H.kill(first, signal.SIGKILL)
    first.wait(timeout=60)
  # The killed run's record is still in the file: a stale lock.
  assert workdir_lock.read_owner(lock)["pid"] == first.pid
  third = H.run(workdir, H.tiny_flags(data_dir, total_steps=3,
                                      eval_every_steps=3))
  assert third.returncode == 0, third.stderr[-3000:]
  assert "took over a stale workdir lock" in third.stderr
  assert f"pid {first.pid}" in third.stderr
  # A clean exit leaves no owner: the next run starts without a warning.
  assert workdir_lock.read_owner(lock) == {}
  H.report("workdir_lock", faults_injected=2, runs_survived=1,
           bad_inputs_refused=1)


def test_lock_in_process(tmp_path):
  # The same rules without a subprocess: a held lock refuses a second
  # holder, even in the same process (flock is per open file).
  a = workdir_lock.WorkdirLock(tmp_path).acquire()
  with pytest.raises(workdir_lock.WorkdirInUseError, match="in use"):
    workdir_lock.WorkdirLock(tmp_path).acquire()
  assert json.loads(workdir_lock.lock_path(tmp_path).read_text())["pid"] > 0
  a.release()
  b = workdir_lock.WorkdirLock(tmp_path).acquire()
  assert b.took_over is None  # released cleanly: not stale
  b.release()
