"""Atomic file writes: nothing half-written is ever taken for good output."""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Any, BinaryIO, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any],
                 *, fsync: bool = True) -> pathlib.Path:
  """Writes via a temporary file in the same folder (fsync), then renames.

  ``fsync=False`` skips the per-file fsync (for thousands of small files
  whose writer syncs once before the file that makes them count).
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name,
                             suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      if fsync:
        os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return path
