#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command on every host (worker).
#
#   launch/tpu_pod.sh TPU_NAME ZONE experiments/configD.py gs://BUCKET/workdirs/D_s256 [--config.x=y ...]
#
# Every host runs `python -m vgg_jax.main ... --multihost`, which calls
# jax.distributed.initialize() (on TPU VMs it finds the coordinator and the
# host count itself).  The global batch (config.batch_size, 256 by default)
# is split over all chips of all hosts; each host reads its own shard of the
# training set.  The workdir must be shared storage (a gs:// bucket) so that
# orbax can write one checkpoint from all hosts; each host writes its own
# log_host{i}.txt there.  ImageNet must be readable from every host
# (TFDS ArrayRecord under --config.data.data_dir, e.g. gs://BUCKET/tfds).
#
# Preemption (spot/preemptible TPUs): the VM gets SIGTERM; the run saves a
# checkpoint at a step all hosts agree on and exits 0.  Run this script again
# with the same workdir to resume exactly where it stopped.
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,18p' "$0"; exit 2
fi
TPU_NAME=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
REPO_DIR=${REPO_DIR:-vgg_jax}  # checkout on every host (see below)
EXTRA="$*"

# One-off set-up of every host (clone + install), skipped if present.
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e
  [ -d $REPO_DIR ] || git clone \${VGG_JAX_REPO:-https://github.com/OWNER/vgg_jax} $REPO_DIR
  cd $REPO_DIR && [ -x .venv/bin/python ] || (python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]')
"

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  cd $REPO_DIR && .venv/bin/python -m vgg_jax.main --multihost \
    --config $CONFIG --workdir $WORKDIR $EXTRA
"
