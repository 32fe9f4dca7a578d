#!/usr/bin/env bash
# Two processes on one machine forming one global mesh (what
# tests/test_multihost.py checks): a rehearsal of a multi-host run on CPU.
#
#   launch/local_multiprocess_cpu.sh [--dry-run] experiments/fashion_mnist.py /tmp/wd_2proc [--config.x=y ...]
#
# Each process has 2 fake CPU devices and uses gloo for collectives.
# --dry-run prints the two commands (quoted as a shell would need them) and
# runs nothing.
set -euo pipefail
DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then DRY_RUN=1; shift; fi
if [ $# -lt 2 ]; then
  echo "usage: $0 [--dry-run] CONFIG WORKDIR [--config.FIELD=VALUE ...]" >&2
  echo "  e.g. $0 experiments/fashion_mnist.py /tmp/wd_2proc" >&2
  exit 2
fi
CONFIG=$1; WORKDIR=$2; shift 2
for o in "$@"; do
  case "$o" in
    --config.*) ;;
    *) echo "error: override '$o' is not of the form --config.FIELD=VALUE" >&2
       exit 2 ;;
  esac
done
PORT=${PORT:-$((20000 + RANDOM % 20000))}
PY=${PYTHON:-.venv/bin/python}
pids=()
for i in 0 1; do
  cmd=(env XLA_FLAGS=--xla_force_host_platform_device_count=2
       VGG_JAX_CPU_COLLECTIVES=gloo
       "$PY" -m vgg_jax.main --config "$CONFIG" --workdir "$WORKDIR"
       --coordinator_address "127.0.0.1:$PORT" --num_processes 2
       --process_id $i "$@")
  if [ "$DRY_RUN" = 1 ]; then
    echo "+ ${cmd[*]@Q} &"
    continue
  fi
  "${cmd[@]}" &
  pids+=($!)
done
if [ "$DRY_RUN" = 1 ]; then exit 0; fi
# SIGTERM/SIGINT to this script reach both processes (a preemption of the
# whole job); a process that dies takes the other down within its
# config.collective_timeout_s at worst (vgg_jax/watchdog.py).
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT
status=0
for p in "${pids[@]}"; do
  # wait returns early (>128) when a trapped signal arrives: wait again.
  while true; do
    rc=0; wait "$p" || rc=$?
    if kill -0 "$p" 2>/dev/null; then continue; fi
    break
  done
  if [ "$rc" -ne 0 ]; then status=$rc; fi
done
exit $status
