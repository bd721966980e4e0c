"""`python -m seg4diff.summary`: prints where the pipeline's results are and the headline numbers so far."""
from __future__ import annotations

import json
from pathlib import Path

from seg4diff.config import load_params
from seg4diff.tracking import tracking_uri


def main() -> None:
    params = load_params()
    print("\n== seg4diff results ==")
    for path in sorted(Path("metrics").glob("*.json")):
        print(f"{path}: {json.dumps(json.loads(path.read_text()))}")
    expert = Path("results/expert.json")
    if expert.exists():
        print(f"expert layer: {json.loads(expert.read_text())}")
    print(f"prepared stores: {params.prepare.output}/<split>.zarr")
    print(f"MLflow:  mlflow ui --backend-store-uri {tracking_uri(params.tracking)} --host 127.0.0.1 --port 5000")
    print("DVC:     dvc metrics show; dvc plots show (writes dvc_plots/index.html)")


if __name__ == "__main__":
    main()
