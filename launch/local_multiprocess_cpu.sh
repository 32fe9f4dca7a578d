#!/usr/bin/env bash
# Two processes on one machine forming one global mesh (what
# tests/test_multihost.py checks): a rehearsal of a multi-host run on CPU.
#
#   launch/local_multiprocess_cpu.sh experiments/fashion_mnist.py /tmp/wd_2proc [--config.x=y ...]
#
# Each process has 2 fake CPU devices and uses gloo for collectives.
set -euo pipefail
CONFIG=$1; WORKDIR=$2; shift 2
PORT=${PORT:-$((20000 + RANDOM % 20000))}
PY=${PYTHON:-.venv/bin/python}
pids=()
for i in 0 1; do
  XLA_FLAGS=--xla_force_host_platform_device_count=2 VGG_JAX_CPU_COLLECTIVES=gloo \
    "$PY" -m vgg_jax.main --config "$CONFIG" --workdir "$WORKDIR" \
    --coordinator_address "127.0.0.1:$PORT" --num_processes 2 --process_id $i "$@" &
  pids+=($!)
done
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
