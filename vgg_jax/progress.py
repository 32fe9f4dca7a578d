"""Progress of long commands: done / total, items per second, ETA.

    bar = Progress(total, desc="evaluate", unit="images")
    for ...:
      bar.update(n)
    bar.close()

One implementation for every long command (evaluation, ``data prepare``,
feature extraction): a bar redrawn in place when stderr is a terminal,
otherwise a log line (logger ``vgg_jax.progress``) every ``log_every_s``
seconds, the way training logs.  On several processes only process 0
shows anything; with ``per_process=True`` each process counts its own share
of a total that is split over processes (process 0 reports its count times
the number of processes, the split is even to within one item).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import IO

log = logging.getLogger("vgg_jax.progress")


def format_duration(seconds: float) -> str:
  """H:MM:SS ('?' when unknown)."""
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _process_info() -> tuple[int, int]:
  if "jax" not in sys.modules:  # never import JAX just to count
    return 0, 1
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index(), jax.process_count()


class Progress:
  """Counts items done towards a total; shows rate and ETA."""

  def __init__(self, total: int | None, *, desc: str = "", unit: str = "items",
               log_every_s: float = 30.0, stream: IO | None = None,
               tty: bool | None = None, per_process: bool = False,
               clock=time.monotonic):
    index, count = _process_info()
    self.scale = count if per_process else 1
    self.enabled = index == 0
    self.total = total
    self.desc, self.unit = desc, unit
    self.log_every_s = log_every_s
    self.stream = stream if stream is not None else sys.stderr
    self.tty = (tty if tty is not None
                else bool(getattr(self.stream, "isatty", lambda: False)()))
    self.clock = clock
    self.start = self.last_shown = clock()
    self.done = 0
    self.closed = False

  @property
  def count(self) -> int:
    """Items done (over all processes when ``per_process``)."""
    n = self.done * self.scale
    return min(n, self.total) if self.total is not None else n

  def rate(self) -> float:
    dt = self.clock() - self.start
    return self.count / dt if dt > 0 else 0.0

  def eta(self) -> float:
    r = self.rate()
    if self.total is None or r <= 0:
      return math.inf
    return (self.total - self.count) / r

  def line(self) -> str:
    total = "?" if self.total is None else f"{self.total:,}"
    pct = (f" {100 * self.count / self.total:5.1f}%" if self.total else "")
    return (f"{self.desc}: {self.count:,}/{total} {self.unit}{pct}, "
            f"{self.rate():.1f} {self.unit}/s, elapsed "
            f"{format_duration(self.clock() - self.start)}, ETA "
            f"{format_duration(self.eta())}")

  def update(self, n: int = 1) -> None:
    self.done += n
    if not self.enabled:
      return
    now = self.clock()
    if self.tty:
      if now - self.last_shown >= 0.2:
        self._draw()
        self.last_shown = now
    elif now - self.last_shown >= self.log_every_s:
      log.info("%s", self.line())
      self.last_shown = now

  def _draw(self) -> None:
    width = 24
    frac = (self.count / self.total) if self.total else 0.0
    filled = int(width * min(1.0, frac))
    bar = "#" * filled + "-" * (width - filled)
    self.stream.write(f"\r[{bar}] {self.line()}")
    self.stream.flush()

  def close(self) -> None:
    """Shows the final count once (a newline after a bar)."""
    if self.closed:
      return
    self.closed = True
    if not self.enabled:
      return
    if self.tty:
      self._draw()
      self.stream.write("\n")
      self.stream.flush()
    else:
      log.info("%s (done)", self.line())

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
