"""Command line: ``python -m vgg_jax.main --config experiments/configE.py --workdir DIR``.

Flags only; the work is ``vgg_jax.train.train_and_evaluate(config, workdir)``.

* ``--config FILE[:ARG]``: an ml_collections config file (``ARG`` picks a
  stage, e.g. ``experiments/configD.py:s384``); override any field with
  ``--config.field=value`` (a misspelt field is an error: configs are
  locked).
* Several hosts (TPU pod, GPU cluster): ``jax.distributed.initialize()`` is
  called when ``--multihost`` is given, or when the environment says so
  (``JAX_COORDINATOR_ADDRESS``, a TPU pod's ``TPU_WORKER_HOSTNAMES`` with
  several hosts, or SLURM with several tasks).  ``--coordinator_address``,
  ``--num_processes`` and ``--process_id`` pass explicit values (e.g. for a
  CPU rehearsal on 127.0.0.1, with ``VGG_JAX_CPU_COLLECTIVES=gloo``).
* A lost process: ``--heartbeat_timeout_s`` (the coordination service ends
  the others, naming it) and ``--config.collective_timeout_s`` (a hung
  collective ends the process: vgg_jax/watchdog.py) bound the wait.
"""

from __future__ import annotations

import os

from vgg_jax import host_malloc

# First, before any thread has a malloc arena (the config file imports
# TensorFlow/JAX modules): see vgg_jax/host_malloc.py.
host_malloc.reuse_freed_memory()

from vgg_jax import xla_cpu  # pylint: disable=g-import-not-at-top
# Before JAX starts its CPU backend (vgg_jax/xla_cpu.py: XLA:CPU options
# measured faster here; a user's own XLA_FLAGS choice wins).
xla_cpu.apply()

from vgg_jax import preemption  # pylint: disable=g-import-not-at-top
# As early as possible: a SIGTERM during start-up (imports, data loading,
# compilation) then stops the run cleanly after its first step.
preemption.install()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags

from vgg_jax import compilation_cache

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (experiments/*.py[:stage]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, "
                               "logs and metrics (created if needed).")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", None, "Call jax.distributed.initialize(); default: "
    "detected from the environment.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "This process's index (multi-host).")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_s", 60, "Multi-host: seconds after which a process "
    "that stopped sending heartbeats is declared dead; the coordination "
    "service then ends every other process with an error naming it "
    "(jax.distributed.initialize's heartbeat_timeout_seconds).")
flags.mark_flags_as_required(["config", "workdir"])


def multihost_requested(environ=os.environ) -> bool:
  if _MULTIHOST.value is not None:
    return _MULTIHOST.value
  if _COORDINATOR.value or environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  hosts = environ.get("TPU_WORKER_HOSTNAMES", "")
  if len([h for h in hosts.split(",") if h]) > 1:
    return True
  return int(environ.get("SLURM_NTASKS", "1") or 1) > 1


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # pylint: disable=g-import-not-at-top
  compilation_cache.enable(jax)
  if multihost_requested():
    preemption.uninstall()  # JAX's preemption notifier takes SIGTERM
    # CPU-only multi-process runs (a rehearsal, launch/local_multiprocess_cpu.sh)
    # need a CPU collectives backend: VGG_JAX_CPU_COLLECTIVES=gloo.
    if os.environ.get("VGG_JAX_CPU_COLLECTIVES"):
      jax.config.update("jax_cpu_collectives_implementation",
                        os.environ["VGG_JAX_CPU_COLLECTIVES"])
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value,
                               heartbeat_timeout_seconds=_HEARTBEAT.value)
  from vgg_jax import config_checks, workdir_lock  # pylint: disable=g-import-not-at-top
  from vgg_jax import train  # pylint: disable=g-import-not-at-top
  # Bad values and a workdir in use are refused before anything is written.
  config_checks.validate(_CONFIG.value, device_count=jax.device_count())
  with workdir_lock.WorkdirLock(_WORKDIR.value, jax.process_index()):
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if jax.process_index() == 0:
    err = result.get("val_top1_error")
    if err is not None:
      print(f"final: step {result['step']}, validation top-1 accuracy "
            f"{100 * (1 - err):.2f}% (top-1 error {100 * err:.2f}%, top-5 "
            f"error {100 * result['val_top5_error']:.2f}%), stopped by "
            f"{result['stopped_by']}")


if __name__ == "__main__":
  from vgg_jax import config_checks  # pylint: disable=g-import-not-at-top
  app.run(main, flags_parser=config_checks.parse_flags)
