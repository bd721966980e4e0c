"""`python -m seg4diff.summary`: prints the expert layer, the headline metrics and where everything is."""
from __future__ import annotations

import json
from pathlib import Path

from seg4diff.config import load_params
from seg4diff.tracking import tracking_uri

ROWS = (("gt_classes", "open vocabulary, GT-class prompts"), ("vocabulary", "open vocabulary, whole vocabulary"),
        ("unsupervised_dataset_matching", "unsupervised, dataset matching"),
        ("unsupervised_per_image_matching", "unsupervised, per-image matching"))


def _read(path: str) -> dict | None:
    file = Path(path)
    return json.loads(file.read_text()) if file.exists() else None


def main() -> None:
    params = load_params()
    print("\n== seg4diff results ==")
    expert = _read(params.select.output)
    if expert:
        runner = expert.get("runner_up", {})
        print(f"expert layer: block {expert['layer']} at σ={expert['timestep']:g}, mIoU {expert['miou']:.3f} "
              f"(95% CI {expert['ci_low']:.3f}–{expert['ci_high']:.3f}; rule {expert['rule']}"
              f"{', forced' if expert['forced'] else ''}); runner-up block {runner.get('layer')} {runner.get('miou', float('nan')):.3f}")
    evaluation = _read(params.evaluate.output)
    if evaluation:
        variants = [v for v in ("base", "finetuned") if v in evaluation]
        print(f"\n| {params.evaluate.split} split (mIoU %) | " + " | ".join(variants) + " |")
        print("|---|" + "---:|" * len(variants))
        for key, label in ROWS:
            print(f"| {label} | " + " | ".join(f"{100 * evaluation[v][key]['miou']:.1f}" for v in variants) + " |")
        for metric in evaluation["base"]["fidelity"]:
            print(f"| {metric} | " + " | ".join(f"{evaluation[v]['fidelity'][metric]:.4f}" for v in variants) + " |")
    print("\nmetrics:  dvc metrics show        plots: dvc plots show  (then open dvc_plots/index.html)")
    print(f"MLflow:   mlflow ui --backend-store-uri {tracking_uri(params.tracking)} --host 127.0.0.1 --port 5000")
    print(f"stores:   {params.prepare.output}/<split>.zarr, {params.extract.output}; adapter: {params.finetune.output}")


if __name__ == "__main__":
    main()
