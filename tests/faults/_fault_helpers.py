"""Shared by the fault-injection tests: a tiny Fashion-MNIST and the real CLI.

Every test drives ``python -m vgg_jax.main`` in a subprocess (the command a
user runs), on a Fashion-MNIST cut down to a few hundred images (IDX files
in a temporary directory, ``--config.data.data_dir``) and net A at 1/16
width, so that a run is a few seconds of compute after start-up.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import signal
import struct
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).absolute().parents[2]
FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")
CONFIG = REPO / "experiments" / "fashion_mnist.py"

# Net A at 1/16 width (4-8-16-32-32 channels), FC 32: the smallest net the
# config accepts; a step is a few ms.
TINY_NET = ("--config.model.width_mult=0.0625", "--config.model.fc_width=32")


def _read_idx(path):
  with gzip.open(path, "rb") as f:
    data = f.read()
  ndim = data[3]
  shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _write_idx(path, arr):
  arr = np.ascontiguousarray(arr, np.uint8)
  header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(
      ">" + "I" * arr.ndim, *arr.shape)
  with gzip.open(path, "wb", compresslevel=1) as f:
    f.write(header + arr.tobytes())


def tiny_fashion_mnist(directory: pathlib.Path, n_train: int = 320,
                       n_test: int = 100) -> pathlib.Path:
  """The first ``n_train``/``n_test`` images of Fashion-MNIST as IDX files."""
  directory.mkdir(parents=True, exist_ok=True)
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    for kind in ("images-idx3", "labels-idx1"):
      name = f"{prefix}-{kind}-ubyte.gz"
      if not (directory / name).exists():
        _write_idx(directory / name, _read_idx(FASHION_MNIST / name)[:n])
  return directory


def tiny_flags(data_dir, **overrides) -> list[str]:
  """Flags of a tiny run: batch 16, eval batch 50, log and checkpoint often."""
  values = {"data.data_dir": str(data_dir), "batch_size": 16,
            "eval_batch_size": 50, "total_steps": 24, "eval_every_steps": 12,
            "log_every_steps": 3, "checkpoint_every_steps": 4,
            "warmup_steps": 2, "keep_checkpoints": 2}
  values.update(overrides)
  return list(TINY_NET) + [f"--config.{k}={v}" for k, v in values.items()]


def env() -> dict:
  e = dict(os.environ)
  e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
  e.setdefault("JAX_PLATFORMS", "cpu")
  e["TF_CPP_MIN_LOG_LEVEL"] = "3"
  return e


def command(workdir, flags, config=CONFIG) -> list[str]:
  return [sys.executable, "-m", "vgg_jax.main", f"--config={config}",
          f"--workdir={workdir}", *flags]


# Generous: a run is ~20 s on an idle 2-core machine, but minutes when the
# machine is shared.
RUN_TIMEOUT = float(os.environ.get("VGG_JAX_FAULT_TIMEOUT", "1500"))


def run(workdir, flags, *, timeout=RUN_TIMEOUT, config=CONFIG, extra_env=None
        ) -> subprocess.CompletedProcess:
  e = env()
  e.update(extra_env or {})
  return subprocess.run(command(workdir, flags, config), capture_output=True,
                        text=True, timeout=timeout, cwd=REPO, env=e)


def start(workdir, flags, *, config=CONFIG, extra_env=None) -> subprocess.Popen:
  """Starts the command; its output (stdout and stderr) goes to a file next
  to the workdir (not a pipe: a full pipe would block the run), read with
  ``output(proc)``."""
  e = env()
  e.update(extra_env or {})
  workdir = pathlib.Path(workdir)
  workdir.parent.mkdir(parents=True, exist_ok=True)
  log_path = workdir.parent / f"{workdir.name}.out.{time.monotonic_ns()}"
  with open(log_path, "w") as f:
    proc = subprocess.Popen(command(workdir, flags, config), stdout=f,
                            stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env=e)
  proc.log_path = log_path
  return proc


def output(proc: subprocess.Popen) -> str:
  return pathlib.Path(proc.log_path).read_text(errors="replace")


def wait_for(predicate, timeout=RUN_TIMEOUT, poll=0.05, proc=None):
  """Polls ``predicate()`` until true; False on timeout or if ``proc`` ended."""
  end = time.monotonic() + timeout
  while time.monotonic() < end:
    if predicate():
      return True
    if proc is not None and proc.poll() is not None:
      return False
    time.sleep(poll)
  return False


def metrics_lines(workdir) -> list[dict]:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def trained_steps(workdir) -> int:
  """The last training step logged in metrics.jsonl (0 if none)."""
  steps = [l["step"] for l in metrics_lines(workdir) if l["kind"] == "train"]
  return max(steps, default=0)


def committed_steps(workdir) -> list[int]:
  from vgg_jax import checkpointing  # pylint: disable=g-import-not-at-top
  d = pathlib.Path(workdir) / checkpointing.CHECKPOINT_DIR
  if not d.is_dir():
    return []
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()
                and (p / checkpointing.COMMIT_FILE).is_file())


def raw_checkpoint(workdir, step) -> dict:
  """Every array of checkpoint ``step``'s "state" item (params, BatchStats,
  optimiser state, step), as numpy, keyed by path: read with orbax alone,
  without the model code."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(workdir).absolute() / "checkpoints" / str(step) / "state"
  tree = ocp.StandardCheckpointer().restore(path)
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def kill(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
  if proc.poll() is None:
    os.kill(proc.pid, sig)


REPORT_ENV = "VGG_JAX_FAULT_REPORT"


def report(test: str, *, faults_injected: int, runs_survived: int = 0,
           examples_lost: int = 0, checkpoints_corrupted: int = 0,
           bad_inputs_refused: int = 0, **details) -> None:
  """One outcome of a fault test: printed, and appended as a JSON line to
  ``$VGG_JAX_FAULT_REPORT`` when set (benchmarks/fault_report.py sums
  them into docs/reliability.md's figures).  Called only after the test's
  assertions passed, so a failed test reports nothing."""
  record = dict(test=test, faults_injected=faults_injected,
                runs_survived=runs_survived, examples_lost=examples_lost,
                checkpoints_corrupted=checkpoints_corrupted,
                bad_inputs_refused=bad_inputs_refused, **details)
  print("\nFAULT-REPORT " + json.dumps(record))
  path = os.environ.get(REPORT_ENV)
  if path:
    with open(path, "a") as f:
      f.write(json.dumps(record) + "\n")
