"""Stage `evaluate`: base vs fine-tuned on the test split — open vocabulary (both prompt protocols), unsupervised
(both matching protocols), generation fidelity — into metrics/evaluate.json, a table and a mask-overlay gallery."""
from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
from prefect import flow
from prefect.artifacts import create_table_artifact

from flows.cli import main
from seg4diff.config import load_params
from seg4diff.data.prepared import native_label, open_prepared
from seg4diff.plots import image_grid, overlay
from seg4diff.outputs import round_floats, write_json
from seg4diff.tracking import stage_run
from flows.runners import gpu_request
from tasks.evaluate import evaluate_model_task

PROTOCOLS = {
    "gt_classes": "open vocabulary, GT-class prompts (oracle, as Seg4Diff)",
    "vocabulary": "open vocabulary, whole-vocabulary prompts",
    "unsupervised_dataset_matching": "unsupervised, Hungarian over the dataset (STEGO)",
    "unsupervised_per_image_matching": "unsupervised, Hungarian per image (DiffSeg)",
}


def comparison_rows(results: dict[str, dict]) -> list[dict]:
    """Returns one row per protocol and metric with a column per model variant."""
    rows = []
    for protocol, label in PROTOCOLS.items():
        for metric in ("miou", "macc", "pacc"):
            rows.append({"protocol": label, "metric": metric,
                         **{v: round(100 * r["segmentation"][protocol][metric], 2) for v, r in results.items()}})
    for metric in next(iter(results.values()))["fidelity"]:
        rows.append({"protocol": "generation fidelity", "metric": metric, **{v: round(r["fidelity"][metric], 4) for v, r in results.items()}})
    return rows


@flow(name="evaluate")
def evaluate(params_path: str = "params.yaml", presets: list[str] | None = None, overrides: dict | None = None) -> dict:
    """Evaluates the base model and, when an adapter exists, the fine-tuned one; returns the metrics written."""
    params = load_params(params_path, overrides, presets or ())
    variants = ["base"] + (["finetuned"] if (Path(params.finetune.output) / "adapter_model.safetensors").exists() else [])
    with stage_run("evaluate", params, ("evaluate",)):
        with gpu_request(params):
            futures = {v: evaluate_model_task.submit(params, v) for v in variants}
        results = {v: future.result() for v, future in futures.items()}
        metrics = {"expert": results["base"]["expert"]["layer"], "sigma": results["base"]["expert"]["timestep"]}
        for variant, result in results.items():
            metrics[variant] = {protocol: {k: round(result["segmentation"][protocol][k], 5) for k in ("miou", "macc", "pacc")}
                                for protocol in PROTOCOLS} | {"fidelity": {k: round(v, 5) for k, v in result["fidelity"].items()}}
            mlflow.log_metrics({f"{variant}.{protocol}.{k}": v for protocol, values in metrics[variant].items() for k, v in values.items()})
        rows = comparison_rows(results)
        header = "| protocol | metric | " + " | ".join(variants) + " |\n|---|---|" + "---:|" * len(variants)
        table = header + "\n" + "\n".join(f"| {r['protocol']} | {r['metric']} | " + " | ".join(str(r[v]) for v in variants) + " |" for r in rows)
        mlflow.log_text(table, "comparison.md")
        create_table_artifact(key="evaluation", table=rows, description=f"Test split, block {metrics['expert']}, σ={metrics['sigma']:g} (segmentation in %)")
        test = open_prepared(Path(params.prepare.output) / f"{params.evaluate.split}.zarr")
        num_classes = test.sizes["class"]
        panels, titles = [], []
        for index in results["base"]["gallery"]:
            image, label = test.image.values[index], native_label(test, index)
            height, width = label.shape
            panels += [overlay(image, np.zeros_like(label), num_classes, alpha=0.0), overlay(image, label, num_classes)]
            titles += [str(test.caption.values[index]) or "image", "ground truth"]
            for variant in variants:
                panels.append(overlay(image, results[variant]["gallery"][index][:height, :width], num_classes))
                titles.append(variant)
        if panels:
            mlflow.log_figure(image_grid(np.stack(panels), titles, columns=2 + len(variants)), "gallery.png")
    metrics = round_floats(metrics)  # as written
    write_json(params.evaluate.output, metrics)
    return metrics



if __name__ == "__main__":
    main("evaluate", evaluate)
