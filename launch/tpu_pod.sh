#!/usr/bin/env bash
# Training on a Cloud TPU VM pod slice (several TPU VM workers, e.g. v4-32 or v5p-64), in bfloat16.
#
# Run from a machine with gcloud and this repository checked out:
#   launch/tpu_pod.sh setup                       # once: copy this checkout to every worker and install
#   launch/tpu_pod.sh train [EXTRA TRAIN ARGS...] # e.g. launch/tpu_pod.sh train --config.total_steps=20000
#
# The same `imtcxr train` command runs on every worker (--worker=all). No coordinator flags are needed:
# jax.distributed.initialize() (called by imtcxr_jax/train/distributed.py) learns each worker's index and
# the address of worker 0 from the TPU VM metadata server, and every worker drives all chips of its host.
#
# Variables (environment):
#   TPU_NAME   name of the TPU VM (required)
#   ZONE       its zone (required), e.g. us-central2-b
#   PROJECT    Google Cloud project (default: gcloud's configured one)
#   REMOTE_DIR where the code goes on each worker (default imtcxr-jax, relative to the home folder)
#   CONFIG     experiment file (default configs/imtcxr_huge.py)
#   WORKDIR    run folder, the SAME path on every worker and on shared storage: all workers write their
#              checkpoint shards into it (and read the phantoms and tokenizer process 0 put there). Mount a
#              Filestore share or a Cloud Storage bucket (gcsfuse) at this path on every worker first.
#              Default /mnt/shared/runs/imtcxr. Running `train` again with the same WORKDIR resumes.
#   MESH       (data, fsdp, tensor) mesh over all chips (default (1,-1,1): parameters, gradients and
#              optimizer state sharded over every chip, ZeRO-3 style; (-1,1,1) is pure data parallel)
#   JAX_SPEC   what `setup` installs (default "jax[tpu]==0.10.2", which pulls the matching libtpu)
#
# The training runs in the foreground of the ssh sessions: start it from tmux/screen so that a dropped
# connection does not hang up the workers (a stopped run resumes from its last checkpoint anyway).
#
# Precision: TPUs compute in bfloat16 natively (--config.model.dtype=bfloat16; parameters and optimizer
# state stay float32, no loss scaling needed).
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU VM zone}"
REMOTE_DIR=${REMOTE_DIR:-imtcxr-jax}
CONFIG=${CONFIG:-configs/imtcxr_huge.py}
WORKDIR=${WORKDIR:-/mnt/shared/runs/imtcxr}
MESH=${MESH:-(1,-1,1)}
JAX_SPEC=${JAX_SPEC:-jax[tpu]==0.10.2}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

gcloud_tpu() {  # gcloud_tpu ssh|scp ARGS...: a TPU VM command with the name, zone and project filled in
  local verb=$1
  shift
  gcloud compute tpus tpu-vm "$verb" --zone "$ZONE" ${PROJECT:+--project "$PROJECT"} --worker=all "$@"
}

case ${1:-} in
  setup)
    # The committed tree only (git archive): no virtual environment or local runs go along.
    archive=$(mktemp -t imtcxr.XXXXXX.tar.gz)
    git -C "$REPO" archive --format=tar.gz -o "$archive" HEAD
    gcloud_tpu scp "$archive" "$TPU_NAME:imtcxr.tar.gz"
    rm -f "$archive"
    gcloud_tpu ssh "$TPU_NAME" --command "
      set -e
      mkdir -p $REMOTE_DIR && tar -xzf imtcxr.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR
      python3 -m venv .venv && . .venv/bin/activate
      pip install -q --upgrade pip && pip install -q -r requirements.txt '$JAX_SPEC'
      python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.devices()[0].device_kind)'
    "
    ;;
  train)
    shift
    # Quote the extra arguments for the remote shell exactly as they were given here.
    extra=""
    if (($#)); then extra=$(printf ' %q' "$@"); fi
    gcloud_tpu ssh "$TPU_NAME" --command "
      set -e
      cd $REMOTE_DIR && . .venv/bin/activate
      python -m imtcxr_jax.cli train --config $CONFIG --workdir $WORKDIR \
        --config.model.dtype=bfloat16 --config.mesh='$MESH'$extra
    "
    ;;
  *)
    echo "usage: TPU_NAME=... ZONE=... $0 setup | train [EXTRA TRAIN ARGS...]" >&2
    exit 2
    ;;
esac
