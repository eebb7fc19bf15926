#!/usr/bin/env bash
# Several local processes joined by jax.distributed, each with its own simulated CPU
# devices: a pod's multi-host code paths (sharded batches, preemption agreement, evaluation
# split over processes) on one machine, without an accelerator.
#
#   PROCESSES=2 DEVICES=4 launch/local_processes.sh --config=configs/default.py:tiny \
#       --workdir=/tmp/two_hosts [--config.x=...]
#
# Every argument goes to `python -m camp_jax.main`. Process i logs to $LOGDIR/process<i>.log
# (default: a temporary folder, printed); the script waits for all and exits non-zero if
# any failed. Variables: PROCESSES (2), DEVICES per process (1), PORT (a free one), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
PROCESSES=${PROCESSES:-2}
DEVICES=${DEVICES:-1}
PYTHON=${PYTHON:-.venv/bin/python}
[[ -x "$PYTHON" ]] || PYTHON=python3
PORT=${PORT:-$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}
LOGDIR=${LOGDIR:-$(mktemp -d -t camp_local_processes.XXXX)}
mkdir -p "$LOGDIR"
echo "logs: $LOGDIR/process<i>.log" >&2
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' INT TERM
for ((i = 0; i < PROCESSES; i++)); do
  env JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES" \
    "$PYTHON" -m camp_jax.main "$@" --coordinator="localhost:$PORT" \
    --num_processes="$PROCESSES" --process_id="$i" > "$LOGDIR/process$i.log" 2>&1 &
  PIDS+=($!)
done
status=0
for pid in "${PIDS[@]}"; do wait "$pid" || status=1; done
exit $status
