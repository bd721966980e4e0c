#!/usr/bin/env bash
# Loads the MLflow UI in headless Chromium (Debian's `chromium`), checks that the seg4diff experiment lists the stage
# runs, and saves a screenshot (mlflow-ui.png). Run after `make demo`: bash .ci/mlflow_ui_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
port=${PORT:-5055}
.venv/bin/mlflow ui --backend-store-uri "sqlite:///$PWD/mlflow.db" --host 127.0.0.1 --port "$port" >/tmp/mlflow-ui.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null' EXIT
for _ in $(seq 90); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done
experiment=$(.venv/bin/python -c "import mlflow; mlflow.set_tracking_uri('sqlite:///$PWD/mlflow.db'); print(mlflow.get_experiment_by_name('seg4diff').experiment_id)")
url="http://127.0.0.1:$port/#/experiments/$experiment/runs"
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
       --disable-component-update --disable-sync "--user-data-dir=$(mktemp -d)" --virtual-time-budget=20000)
command -v chromium >/dev/null || { echo "mlflow_ui_check: Debian's chromium is not installed (make ui-check installs it)"; exit 1; }
chromium "${flags[@]}" --dump-dom "$url" > /tmp/mlflow-ui.html 2>/dev/null
chromium "${flags[@]}" --window-size=1600,1000 --screenshot="$PWD/mlflow-ui.png" "$url" 2>/dev/null
missing=0
for stage in prepare extract score select finetune evaluate; do
  grep -q "$stage" /tmp/mlflow-ui.html || { echo "MLflow UI: no run named $stage"; missing=1; }
done
[ "$missing" = 0 ] && echo "MLflow UI lists the stage runs; screenshot: mlflow-ui.png"
exit "$missing"
