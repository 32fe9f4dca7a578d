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
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
