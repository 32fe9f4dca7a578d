"""A hung collective becomes a clear error after a bounded time, not a silent hang.

In a multi-process run every step waits, in its gradient all-reduce, for every
other process.  If one never arrives (killed, its host gone, or stuck), the
others wait inside XLA: gloo's CPU all-reduce gives up only after XLA's own
30-minute limit, accelerator collectives may wait forever, and the Python main
thread, blocked in C++, runs no signal handler, so SIGTERM does nothing either.

``Watchdog`` is a daemon thread that the training loop tells of progress
(``beat``).  When no progress comes for the limit, it logs what the loop was
waiting for, dumps every thread's Python stack to stderr and ends the process
with ``HUNG_EXIT_STATUS`` (``os._exit``: a thread blocked in a collective
cannot be interrupted, and exit handlers could block on the same runtime).  A
resume from the workdir's last checkpoint then continues exactly.

The limit (``config.collective_timeout_s``): a number of seconds, or ``None``
for an adaptive one: ``factor`` times the longest gap between beats seen so
far (the slowest step, log interval or evaluation), at least ``floor_s``.
Either way the first beat (the step's compilation) may take ``first_s``.

``notice_signal`` (a SIGTERM seen by the process's own handler) shortens the
limit to ``grace_s``: a preempted process stuck in a collective exits soon
instead of waiting for a step that never comes.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

# EX_TEMPFAIL (sysexits.h): a temporary failure; resuming later may succeed.
HUNG_EXIT_STATUS = 75

# The watchdog of the running training loop (None outside one), so that long
# phases inside it (an evaluation over a whole split) can report progress per
# batch through ``heartbeat`` without being handed the object.
_active: "Watchdog | None" = None


def heartbeat(waiting_for: str) -> None:
  """Progress inside the training loop's current phase (no-op outside one).

  Evaluation calls this per batch or example: a full validation split can
  take longer than any step, and without beats the adaptive limit (10x the
  slowest step) would end a healthy run in its first evaluation.
  """
  dog = _active
  if dog is not None:
    dog.beat(waiting_for)


def _exit_hung(message: str) -> None:
  log.error("%s", message)
  for h in logging.getLogger().handlers:
    try:
      h.flush()
    except Exception:  # pylint: disable=broad-except
      pass
  print(f"ERROR: {message}", file=sys.stderr, flush=True)
  try:
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
  except Exception:  # pylint: disable=broad-except
    pass
  os._exit(HUNG_EXIT_STATUS)  # pylint: disable=protected-access


class Watchdog:
  """Ends the process when the loop makes no progress for too long.

  Use as a context manager around the loop; call ``beat(waiting_for)`` each
  time the loop has made progress, naming what it waits for next.
  """

  def __init__(self, timeout_s: float | None = None, *, floor_s: float = 300.0,
               factor: float = 10.0, first_s: float = 900.0,
               grace_s: float = 60.0, poll_s: float = 0.5,
               context: str = "",
               on_hang: Callable[[str], None] = _exit_hung,
               clock: Callable[[], float] = time.monotonic):
    if timeout_s is not None and timeout_s <= 0:
      raise ValueError(f"collective_timeout_s must be > 0 seconds (or None "
                       f"for the adaptive limit), got {timeout_s}")
    self.timeout_s, self.floor_s, self.factor = timeout_s, floor_s, factor
    self.first_s, self.grace_s, self.poll_s = first_s, grace_s, poll_s
    self.context, self.on_hang, self.clock = context, on_hang, clock
    self._lock = threading.Lock()
    self._last = clock()
    self._waiting_for = "the first training step (compiling)"
    self._beats = 0
    self._slowest = 0.0
    self._signal_at: float | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self.fired = False

  def limit(self) -> float:
    """Seconds the loop may now go without a beat."""
    if self._beats == 0:  # compiling the step: minutes on a busy CPU
      return max(self.first_s, self.timeout_s or self.floor_s)
    if self.timeout_s is not None:
      return self.timeout_s
    return max(self.floor_s, self.factor * self._slowest)

  @property
  def signal_noticed(self) -> bool:
    return self._signal_at is not None

  def beat(self, waiting_for: str) -> None:
    now = self.clock()
    with self._lock:
      if self._beats > 0:  # the first gap is compilation, not a step
        self._slowest = max(self._slowest, now - self._last)
      self._beats += 1
      self._last, self._waiting_for = now, waiting_for
      self._signal_at = None  # the loop moves: it will see the signal itself

  def notice_signal(self) -> None:
    """A SIGTERM arrived: the loop has ``grace_s`` to reach a step boundary."""
    with self._lock:
      if self._signal_at is None:
        self._signal_at = self.clock()

  def check(self, now: float | None = None) -> str | None:
    """The error message if the limit has passed, else None."""
    now = self.clock() if now is None else now
    with self._lock:
      idle = now - self._last
      limit = self.limit()
      if self._signal_at is not None and now - self._signal_at > self.grace_s:
        return (f"SIGTERM received {now - self._signal_at:.0f} s ago and the "
                f"training loop has not reached a step boundary since (it "
                f"waits for {self._waiting_for}, {idle:.0f} s without "
                f"progress): a collective is stuck.  Exiting without a new "
                f"checkpoint{self.context}")
      if idle > limit:
        how = ("config.collective_timeout_s" if self.timeout_s is not None
               else f"adaptive: {self.factor:g}x the slowest interval, at "
               f"least {self.floor_s:g} s; set config.collective_timeout_s")
        return (f"no training progress for {idle:.0f} s while waiting for "
                f"{self._waiting_for} (limit {limit:.0f} s, {how}): a "
                f"collective is hung, most likely because another process "
                f"died or is stuck.  Exiting with status "
                f"{HUNG_EXIT_STATUS}{self.context}")
    return None

  def _run(self) -> None:
    while not self._stop.wait(self.poll_s):
      message = self.check()
      if message is not None:
        self.fired = True
        self.on_hang(message)
        return

  def __enter__(self) -> "Watchdog":
    global _active
    _active = self
    self._last = self.clock()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="vgg_jax-watchdog",
                                    daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    global _active
    if _active is self:
      _active = None
    self._stop.set()
    if self._thread is not None:
      self._thread.join()


class SignalWakeup:
  """Tells a watchdog of SIGTERM even while the main thread is blocked in C++.

  Python runs a signal handler only between bytecodes of the main thread, so
  a handler cannot see a signal while the main thread waits in a collective.
  Python's C-level handler does write the signal number to the wakeup fd at
  once; a thread reading it calls ``watchdog.notice_signal()``.  Works only
  for signals that have a Python handler (the single-process SIGTERM handler
  of the training loop); on several processes JAX's preemption notifier owns
  SIGTERM (vgg_jax/preemption.py), and a process stuck in a collective exits
  at the watchdog's limit.  A no-op outside the main thread.
  """

  def __init__(self, watchdog: Watchdog, signals=(signal.SIGTERM,)):
    self.watchdog, self.signals = watchdog, {int(s) for s in signals}
    self._old_fd = None
    self._fds = None
    self._thread = None

  def __enter__(self) -> "SignalWakeup":
    if threading.current_thread() is not threading.main_thread():
      return self
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
      self._old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except ValueError:
      os.close(r)
      os.close(w)
      return self
    self._fds = (r, w)
    self._thread = threading.Thread(target=self._read, daemon=True,
                                    name="vgg_jax-signal-wakeup")
    self._thread.start()
    return self

  def _read(self) -> None:
    r = self._fds[0]
    while True:
      try:
        data = os.read(r, 64)
      except OSError:
        return
      if not data:
        return
      if any(b in self.signals for b in data):
        self.watchdog.notice_signal()

  def __exit__(self, *exc) -> None:
    if self._fds is None:
      return
    signal.set_wakeup_fd(self._old_fd if self._old_fd is not None else -1)
    r, w = self._fds
    os.close(w)
    if self._thread is not None:
      # Closing the write end does not wake a blocked read of a pipe whose
      # write end another fd still holds; the thread is a daemon either way.
      self._thread.join(timeout=0.1)
    os.close(r)
