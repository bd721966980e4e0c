#!/usr/bin/env bash
# One command for the GPU benchmark (benchmarks/gpu.py): prints the card, then every measurement; log in $1 if given.
# On a machine whose Python lacks diffusers, put its wheel in .whl/ first (see docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/seg4diff-site .whl/*.whl
  export PYTHONPATH=/tmp/seg4diff-site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 benchmarks/gpu.py "${@:2}" 2>&1 | tee "${1:-/dev/null}"
