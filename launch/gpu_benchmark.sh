#!/usr/bin/env bash
# One short accelerator benchmark, each figure printed with the device kind (last line of each
# command is one JSON object):
#   * the Flickr30K-test-sized score matrix (1000 x 5000 pairs, d=1024) by the fast path in
#     float32 and bfloat16, the reference timed on a 100-caption slice for the ratio and the
#     largest difference;
#   * the real Flickr30K stage-2 train step at batch 128 (synthetic data of the real size),
#     float32 and bfloat16.
#   bash launch/gpu_benchmark.sh            # on the accelerator
#   bash launch/gpu_benchmark.sh --small    # tiny sizes, a CPU smoke test
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if [[ "${1:-}" == "--small" ]]; then
  scoring=(--embed_dim=32 --img_dim=64 --images=8 --captions=40)
  train=(--config=configs/default.py:tiny --config.model.variant=gate_fusion --steps=2)
else
  scoring=(--preset=flickr30k_test --reference_captions=100)
  train=(--config=configs/flickr30k.py:stage2,synthetic --steps=10)
fi
"$PY" -c 'import jax; print("devices:", jax.devices())'
for dtype in float32 bfloat16; do
  "$PY" -m camp_jax.bench scoring "${scoring[@]}" --dtype="$dtype" --json
  "$PY" -m camp_jax.bench train_step "${train[@]}" --config.model.dtype="$dtype" --json
done
