#!/usr/bin/env bash
# One command for the GPU benchmark (benchmarks/gpu.py): prints the card, then every measurement; log in $1 if given.
# Then the newer families at their real widths (benchmarks/family_capture_cost.py, bf16, 1024 px = a 64 × 64 token
# grid): FLUX.2-dev (48 heads × 128) and Qwen-Image (24 heads × 128) — exactness, stock vs capture, peak memory.
# On a machine whose Python lacks diffusers or transformers, put their wheels in .whl/ first (docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/seg4diff-site .whl/*.whl
  export PYTHONPATH=/tmp/seg4diff-site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 benchmarks/gpu.py "${@:2}" 2>&1 | tee "${1:-/dev/null}"
family() { python3 benchmarks/family_capture_cost.py --device cuda --dtype bfloat16 --grid 64 --repeats 10 "$@" 2>&1 \
  | tee -a "${LOG:-/dev/null}"; }
LOG="${1:-}" family --heads 48 --head-dim 128 --text 512 --only Flux2Transformer2DModel
LOG="${1:-}" family --heads 24 --head-dim 128 --text 256 --only QwenImageTransformer2DModel
