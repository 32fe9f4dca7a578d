"""One run per workdir: a lock file naming the owner's host and pid.

Two runs writing one workdir would interleave checkpoints, metrics and the
config, and each could delete the other's checkpoints (orbax keeps the
latest few).  ``WorkdirLock`` is taken before anything is read or written:

* ``workdir/.lock.process<i>`` (one per JAX process, so that every process
  of a second multi-host job refuses, not only process 0) is opened and
  locked with ``flock``; the holder writes ``{"host", "pid", "started"}``
  into it.
* The kernel drops a ``flock`` when its process dies (SIGKILL, OOM, a crashed
  VM's NFS client lease), so a lock file left by a dead run is *stale*: the
  next run takes the lock (atomically: ``flock`` has one winner), logs the
  dead owner, and overwrites the owner record.  No pid guessing, no race
  between two runs taking over the same stale file.
* A live owner: ``WorkdirInUseError`` naming its host and pid, before any
  compute.

On file systems without ``flock`` (some FUSE mounts) the lock cannot be
taken: an error says so, and ``VGG_JAX_NO_WORKDIR_LOCK=1`` skips locking for
those who ensure one run per workdir themselves.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import pathlib
import socket
import time

log = logging.getLogger(__name__)

LOCK_PREFIX = ".lock.process"
SKIP_ENV = "VGG_JAX_NO_WORKDIR_LOCK"


class WorkdirInUseError(RuntimeError):
  pass


def lock_path(workdir: str | os.PathLike, process_index: int = 0
              ) -> pathlib.Path:
  return pathlib.Path(workdir).absolute() / f"{LOCK_PREFIX}{process_index}"


def read_owner(path: pathlib.Path) -> dict:
  """The owner record of a lock file ({} if empty or unreadable)."""
  try:
    owner = json.loads(path.read_text() or "{}")
    return owner if isinstance(owner, dict) else {}
  except (OSError, ValueError):
    return {}


class WorkdirLock:
  """Context manager: holds ``workdir``'s lock for this process."""

  def __init__(self, workdir: str | os.PathLike, process_index: int = 0):
    self.path = lock_path(workdir, process_index)
    self._fd: int | None = None
    self.took_over: dict | None = None  # the stale owner record, if any

  def acquire(self) -> "WorkdirLock":
    if os.environ.get(SKIP_ENV):
      log.warning("%s is set: the workdir is not locked", SKIP_ENV)
      return self
    self.path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
        owner = read_owner(self.path)
        raise WorkdirInUseError(
            f"workdir {self.path.parent} is in use by another run: "
            f"host {owner.get('host', '?')}, pid {owner.get('pid', '?')}, "
            f"started {owner.get('started', '?')} (lock {self.path}).  Wait "
            "for it to finish, stop it, or use another --workdir.") from e
      raise WorkdirInUseError(
          f"cannot lock {self.path} ({e}); if this file system has no "
          f"flock and you are sure only one run uses the workdir, set "
          f"{SKIP_ENV}=1") from e
    previous = read_owner(self.path)
    if previous:
      # The file outlived its owner (the kernel released the flock when the
      # process died): a stale lock, taken over now that we hold it.
      self.took_over = previous
      log.warning("took over a stale workdir lock %s left by host %s pid %s "
                  "(that process is gone)", self.path,
                  previous.get("host", "?"), previous.get("pid", "?"))
    record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                         "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode() + b"\n", 0)
    os.fsync(fd)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is None:
      return
    # Empty the record first, so a later run does not report a stale lock
    # after a clean exit; then drop the flock.
    try:
      os.ftruncate(self._fd, 0)
    except OSError:
      pass
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
