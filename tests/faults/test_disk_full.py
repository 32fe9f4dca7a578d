"""Disk full while saving (docs/reliability.md, fault 4): a clear error, the
previous checkpoint intact and restorable, nothing a restart would take for
a good checkpoint; after space is freed the same command resumes.

The workdir is a small tmpfs (needs root: ``mount -t tmpfs``; the test is
skipped where it cannot mount), sized so that the first checkpoint fits and
the second does not: a real ENOSPC from the kernel, met by orbax's writer
threads, not a mock.
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import _fault_helpers as H  # noqa: E402  pylint: disable=g-import-not-at-top

pytestmark = pytest.mark.slow


@pytest.fixture
def small_tmpfs(tmp_path):
  mount_point = tmp_path / "tmpfs"
  mount_point.mkdir()
  # One checkpoint of the tiny net is ~440 KB (with logs and TensorBoard
  # files ~0.5 MB): 760 KB holds one, not two.
  proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=760k", "tmpfs",
                         str(mount_point)], capture_output=True, text=True)
  if proc.returncode:
    pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); run "
                "as root to inject a real ENOSPC")
  try:
    yield mount_point
  finally:
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_disk_full_while_saving(small_tmpfs, tmp_path):
  data_dir = H.tiny_fashion_mnist(tmp_path / "fmnist")
  workdir = small_tmpfs / "wd"
  flags = H.tiny_flags(data_dir, checkpoint_every_steps=4, keep_checkpoints=5,
                       eval_every_steps=24, log_every_steps=4)
  proc = H.run(workdir, flags)
  out = proc.stdout + proc.stderr
  assert proc.returncode != 0, out[-3000:]
  assert "could not write the checkpoint" in out, out[-4000:]
  assert "the disk is full" in out
  good = H.committed_steps(workdir)
  assert good == [4], good
  assert "The last complete checkpoint (4) is intact" in out
  # The previous checkpoint restores (orbax alone) and is finite.
  state = H.raw_checkpoint(workdir, 4)
  assert int(state["['step']"]) == 4
  assert all(np.isfinite(v).all() for v in state.values()
             if np.issubdtype(v.dtype, np.floating))
  # Space freed (the tmpfs grown), the same command resumes from step 4:
  # the failed save's leftovers are not taken for a checkpoint.
  subprocess.run(["mount", "-o", "remount,size=16m", str(small_tmpfs)],
                 check=True)
  proc = H.run(workdir, flags)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resuming from the workdir's checkpoint at step 4" in proc.stderr
  assert 24 in H.committed_steps(workdir)
  H.report("disk_full", faults_injected=1, runs_survived=1)
