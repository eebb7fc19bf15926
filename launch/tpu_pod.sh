#!/usr/bin/env bash
# Trains CAMP on every worker of a Cloud TPU VM pod slice (one process per worker host).
#
# Every worker runs the same command; jax.distributed finds the other workers itself
# (CAMP_DISTRIBUTED=1 tells camp_jax.main to call it), the mesh spans every chip of the
# slice, each worker reads its rows of every global batch, process 0 writes the logs,
# summaries and eval JSON, and all workers write their shards of each checkpoint.
#
# Variables (environment):
#   TPU_NAME          (required) TPU VM name, e.g. camp-v4-32
#   ZONE              (required) its zone, e.g. us-central2-b
#   BUCKET_WORKDIR    (required) gs://BUCKET/PATH for checkpoints, logs and eval results,
#                     shared by all workers. It is mounted with gcsfuse at $MOUNT on every
#                     worker and the run's --workdir is the mounted path (camp_jax opens its
#                     workdir with local file APIs).
#   MOUNT             mount point on the workers (default /tmp/camp_bucket)
#   DATA_DIR          precomp data folder on every worker's local disk (default
#                     /tmp/camp_data/coco_precomp). Read features from local disk, not through
#                     the gcsfuse mount: the pipeline's random row reads are far slower there.
#   DATA_URL          with SETUP=1: gs://... folder copied to DATA_DIR on every worker
#   CONFIG            run config (default configs/default.py)
#   EXTRA_FLAGS       more flags, e.g. "--config.batch_size=512 --config.num_epochs=30"
#   PROJECT           gcloud project (default: gcloud's)
#   REPO_DIR          checkout on the workers (default ~/camp_jax)
#   HEARTBEAT_TIMEOUT seconds until the other workers abort when one dies (default 60)
#   CREATE=1          first create the slice: ACCELERATOR_TYPE (default v4-32),
#                     RUNTIME_VERSION (default tpu-ubuntu2204-base)
#   SETUP=1           first copy this checkout to every worker and install it into a
#                     Python 3.11 venv at $VENV (jax 0.10 needs Python >= 3.11; the runtime
#                     images ship 3.10, so python3.11 comes from apt), jax and libtpu in one
#                     resolve: pip install -e '.[tpu,data]'
#   VENV              the workers' venv (default ~/camp_venv)
#   DRY_RUN=1         print the commands only
#
# Example:
#   TPU_NAME=camp-v4-32 ZONE=us-central2-b BUCKET_WORKDIR=gs://my-bucket/camp/run1 \
#     DATA_DIR=/tmp/camp_bucket/data/coco_precomp SETUP=1 launch/tpu_pod.sh
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${BUCKET_WORKDIR:?set BUCKET_WORKDIR=gs://...}"
MOUNT=${MOUNT:-/tmp/camp_bucket}
DATA_DIR=${DATA_DIR:-/tmp/camp_data/coco_precomp}
VENV=${VENV:-'~/camp_venv'}
CONFIG=${CONFIG:-configs/default.py}
EXTRA_FLAGS=${EXTRA_FLAGS:-}
REPO_DIR=${REPO_DIR:-'~/camp_jax'}
HEARTBEAT_TIMEOUT=${HEARTBEAT_TIMEOUT:-60}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}
RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}

case "$BUCKET_WORKDIR" in gs://*) ;; *) echo "BUCKET_WORKDIR must be gs://BUCKET/PATH" >&2; exit 2;; esac
BUCKET=${BUCKET_WORKDIR#gs://}; BUCKET=${BUCKET%%/*}
SUBDIR=${BUCKET_WORKDIR#gs://$BUCKET}; SUBDIR=${SUBDIR#/}
WORKDIR="$MOUNT/$SUBDIR"

run() {  # Prints a command, then runs it unless DRY_RUN=1.
  printf '+'; printf ' %q' "$@"; printf '\n'
  [[ "${DRY_RUN:-0}" == 1 ]] || "$@"
}
on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all \
    --command="$1"
}

if [[ "${CREATE:-0}" == 1 ]]; then
  run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"
fi

if [[ "${SETUP:-0}" == 1 ]]; then
  REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
  ARCHIVE=$(mktemp -u /tmp/camp_jax.XXXXXX).tar.gz
  run tar -czf "$ARCHIVE" -C "$REPO_ROOT" --exclude=.venv --exclude=runs --exclude=.git .
  run gcloud compute tpus tpu-vm scp "$ARCHIVE" "$TPU_NAME:/tmp/camp_jax.tar.gz" --zone="$ZONE" \
    $PROJECT_FLAG --worker=all
  on_all_workers "set -e; sudo apt-get -qq update && sudo apt-get -qq install -y python3.11 \
python3.11-venv && mkdir -p $REPO_DIR && tar -xzf /tmp/camp_jax.tar.gz -C $REPO_DIR && \
python3.11 -m venv $VENV && $VENV/bin/pip install -q -U pip && \
cd $REPO_DIR && $VENV/bin/pip install -q -e '.[tpu,data]'"
  if [[ -n "${DATA_URL:-}" ]]; then
    on_all_workers "mkdir -p $DATA_DIR && gcloud storage cp -r '$DATA_URL/*' $DATA_DIR/"
  fi
fi

# The same command on every worker: mount the bucket, then train (stdout/stderr to a log
# per worker under the mount, and to the ssh session). Orbax finishes every save by renaming
# a directory, which gcsfuse refuses unless --rename-dir-limit allows it.
CMD="set -eo pipefail; mkdir -p $MOUNT; mountpoint -q $MOUNT || \
gcsfuse --implicit-dirs --rename-dir-limit=1000000 $BUCKET $MOUNT; \
mkdir -p $WORKDIR/logs; cd $REPO_DIR; \
CAMP_DISTRIBUTED=1 $VENV/bin/python -m camp_jax.main --config=$CONFIG --workdir=$WORKDIR \
--config.data.dir=$DATA_DIR --heartbeat_timeout=$HEARTBEAT_TIMEOUT $EXTRA_FLAGS \
2>&1 | tee $WORKDIR/logs/worker_\$(hostname).log"
echo "command on every worker of $TPU_NAME:"
echo "  $CMD"
on_all_workers "$CMD"
