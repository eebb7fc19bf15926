#!/usr/bin/env bash
# Trains CAMP on the GPUs of one host.
#
# Default (PER_GPU=0): ONE process that sees every GPU; the mesh spans them and the global
# batch is split over them. No jax.distributed, nothing else to set up.
# PER_GPU=1: one process per GPU on this host (the layout of the SLURM script, useful to
# test it on one machine): process i gets GPU i through JAX_LOCAL_DEVICE_IDS and they meet
# through jax.distributed at localhost:$PORT.
#
# Variables (environment):
#   WORKDIR      (required) run folder
#   CONFIG       run config (default configs/default.py)
#   DATA_DIR     precomp data folder (default: the config's)
#   GPUS         GPUs to use, e.g. 0,1,2,3 (default: all that nvidia-smi lists)
#   PER_GPU      0 (default) or 1, see above
#   PORT         coordinator port with PER_GPU=1 (default 12355)
#   HEARTBEAT_TIMEOUT  PER_GPU=1: seconds until the others abort when one dies (default 60)
#   EXTRA_FLAGS  more flags, e.g. "--config.batch_size=256"
#   PYTHON       interpreter (default python3)
#   DRY_RUN=1    print the commands only
#
# Example:  WORKDIR=runs/coco DATA_DIR=data/coco_precomp launch/multi_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."

: "${WORKDIR:?set WORKDIR}"
CONFIG=${CONFIG:-configs/default.py}
PYTHON=${PYTHON:-python3}
PORT=${PORT:-12355}
HEARTBEAT_TIMEOUT=${HEARTBEAT_TIMEOUT:-60}
if [[ -z "${GPUS:-}" ]]; then
  GPUS=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | paste -sd, - || true)
  [[ -n "$GPUS" ]] || { echo "no GPU found (set GPUS=0,1,...)" >&2; exit 2; }
fi
FLAGS=(--config="$CONFIG" --workdir="$WORKDIR")
[[ -n "${DATA_DIR:-}" ]] && FLAGS+=(--config.data.dir="$DATA_DIR")
# shellcheck disable=SC2206
FLAGS+=(${EXTRA_FLAGS:-})

show() { printf '+'; printf ' %q' "$@"; printf '\n'; }

if [[ "${PER_GPU:-0}" != 1 ]]; then
  show env CUDA_VISIBLE_DEVICES="$GPUS" "$PYTHON" -m camp_jax.main "${FLAGS[@]}"
  [[ "${DRY_RUN:-0}" == 1 ]] || exec env CUDA_VISIBLE_DEVICES="$GPUS" "$PYTHON" -m camp_jax.main "${FLAGS[@]}"
  exit 0
fi

IFS=, read -ra IDS <<< "$GPUS"
N=${#IDS[@]}
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT INT TERM
mkdir -p "$WORKDIR"
for i in "${!IDS[@]}"; do
  CMD=(env CUDA_VISIBLE_DEVICES="$GPUS" JAX_LOCAL_DEVICE_IDS="${IDS[$i]}" "$PYTHON" -m camp_jax.main
       "${FLAGS[@]}" --coordinator="localhost:$PORT" --num_processes="$N" --process_id="$i"
       --heartbeat_timeout="$HEARTBEAT_TIMEOUT")
  show "${CMD[@]}"
  if [[ "${DRY_RUN:-0}" != 1 ]]; then
    if [[ $i == 0 ]]; then "${CMD[@]}" & else "${CMD[@]}" > "$WORKDIR/process_$i.log" 2>&1 & fi
    PIDS+=($!)
  fi
done
STATUS=0
for pid in "${PIDS[@]}"; do wait "$pid" || STATUS=$?; done
exit $STATUS
