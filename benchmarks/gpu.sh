#!/usr/bin/env bash
# One short accelerator benchmark: the Flickr30K-test-sized score matrix (1000 x 5000 pairs,
# d=1024) by the fast path in float32 and bfloat16 (the reference timed on a 100-caption
# slice for the ratio and the max abs difference), then a stage-2-like train step at batch
# 128. Prints the device kind with every figure, one JSON line each.
#   bash benchmarks/gpu.sh            # on the accelerator
#   bash benchmarks/gpu.sh --small    # tiny sizes, a CPU smoke test
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if [[ "${1:-}" == "--small" ]]; then
  scoring=(--embed-dim 32 --img-dim 64 --images 8 --captions 40)
  train=(--small)
else
  scoring=(--preset flickr30k_test --reference-captions 100)
  train=()
fi
"$PY" -c 'import jax; print("devices:", jax.devices())'
for dtype in float32 bfloat16; do
  "$PY" -m camp_jax.bench scoring "${scoring[@]}" --dtype "$dtype" --json
done
"$PY" benchmarks/train_step.py "${train[@]}"
"$PY" benchmarks/train_step.py "${train[@]}" --bfloat16
