"""TensorBoard event files without TensorFlow: ``workdir/tensorboard/``.

clu's default writer (``clu.metric_writers``) writes through TensorFlow's
summary API, and importing TensorFlow costs ~5 CPU-seconds: a tenth of the
Fashion-MNIST default job's start-up on the project's 2-core machine, for a
few scalars.  The ``tensorboard`` package itself has what a scalar writer
needs, TensorFlow-free: the event protos, the record framing
(``RecordWriter``, with its CRCs) and the hparams plugin's summary.  TensorBoard
reads the files as it reads TensorFlow's (same ``events.out.tfevents.*``
name, same records).

Local paths only (the training workdir is a local path).
"""

from __future__ import annotations

import os
import pathlib
import socket
import time
from typing import Any, Mapping

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter


class SummaryWriter:
  """Scalars and hyperparameters as TensorBoard events, written as they come.

  Same calls as clu's writers: ``write_scalars(step, {tag: value})``,
  ``write_hparams({name: value})``, ``flush()``, ``close()``.  With
  ``enabled=False`` (processes other than 0) every call does nothing.
  """

  def __init__(self, logdir: str | os.PathLike, *, enabled: bool = True):
    self.enabled = enabled
    self._records = None
    if not enabled:
      return
    logdir = pathlib.Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    # TensorFlow's name: events.out.tfevents.<seconds>.<host>.<pid>.<n>
    self.path = logdir / (f"events.out.tfevents.{int(time.time())}."
                          f"{socket.gethostname()}.{os.getpid()}.0")
    self._records = RecordWriter(open(self.path, "ab"))  # pylint: disable=consider-using-with
    # The first record of every event file: its format version.
    self._write(event_pb2.Event(wall_time=time.time(),
                                file_version="brain.Event:2"))
    self.flush()

  def _write(self, event: event_pb2.Event) -> None:
    self._records.write(event.SerializeToString())

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
              for k, v in scalars.items()]
    self._write(event_pb2.Event(wall_time=time.time(), step=int(step),
                                summary=summary_pb2.Summary(value=values)))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """The HParams dashboard's session summary (bool, int, float, str)."""
    if not self.enabled:
      return
    # Imported here: only the first run of a workdir writes hparams.
    from tensorboard.plugins.hparams import summary_v2  # pylint: disable=g-import-not-at-top
    self._write(event_pb2.Event(wall_time=time.time(), step=0,
                                summary=summary_v2.hparams_pb(dict(hparams))))

  def flush(self) -> None:
    if self._records is not None:
      self._records.flush()

  def close(self) -> None:
    if self._records is not None:
      self._records.close()
      self._records = None
