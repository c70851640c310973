#!/bin/bash
# Runs one job on every worker of a Cloud TPU VM slice (e.g. v4-32): the same command on
# all workers; JAX finds the other hosts itself (TPU_WORKER_HOSTNAMES is set on TPU VMs,
# and mscad_jax.parallel calls jax.distributed.initialize() when it sees it).
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b BUCKET=my-bucket \
#     bash experiments/launch_tpu_pod.sh configs/cifar10.py:normal_class=3 cifar10_class3
#
# TFDS data is read straight from gs://$BUCKET/tensorflow_datasets (TFDS reads gs:// paths
# itself; prepare it once with `tfds build cifar10 --data_dir=gs://$BUCKET/tensorflow_datasets`).
# The workdir must be one directory that every worker sees: orbax writes each host's
# shards of a checkpoint there. It is gs://$BUCKET/runs/<name>: orbax and TensorBoard's
# writer use their own gs:// file systems, and results.json, scores.csv, plots and log.txt
# go through tf.io.gfile (mscad_jax.files), so no mount is needed.
# First run `python -m mscad_jax.plan --config=... --num_devices=<chips>` to check that the
# batch divides the mesh and fits in memory.
set -euo pipefail
CONFIG=${1:?usage: launch_tpu_pod.sh CONFIG[:args] RUN_NAME}
NAME=${2:?usage: launch_tpu_pod.sh CONFIG[:args] RUN_NAME}
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${BUCKET:?set BUCKET (a bucket name, no gs://)}"
REPO=${REPO:-https://github.com/your-org/mscad_jax.git}

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  set -e
  [ -d mscad_jax ] || git clone -q $REPO mscad_jax
  cd mscad_jax
  [ -d .venv ] || (python3 -m venv .venv && .venv/bin/pip -q install -e . 'jax[tpu]' \
      -f https://storage.googleapis.com/jax-releases/libtpu_releases.html)
  TFDS_DATA_DIR=gs://$BUCKET/tensorflow_datasets .venv/bin/python -m mscad_jax.main \
      --config=$CONFIG --workdir=gs://$BUCKET/runs/$NAME
"
