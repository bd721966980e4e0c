"""Stage `evaluate`: base vs fine-tuned on the test split — open vocabulary (both prompt protocols), unsupervised
(both matching protocols), generation fidelity — into metrics/evaluate.json, a table and a mask-overlay gallery."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
from prefect.artifacts import create_markdown_artifact

from flows.cli import main
from flows.runners import gpu_request
from flows.stages import stage_flow
from flows.tracking import numeric_leaves
from seg4diff.config import Params
from seg4diff.data.prepared import native_label, prepared_split
from seg4diff.evaluation.comparison import comparison_rows, paired_comparison, variant_metrics
from seg4diff.reporting.outputs import round_floats, write_json
from seg4diff.reporting.plots import image_grid, overlay
from tasks.evaluate import evaluate_model_task

READING = ("background_threshold",)


def reading_rows(rows: list[dict], metrics: dict, variants: list[str]) -> list[dict]:
    """Returns the comparison rows with the background threshold chosen on val next to the chosen predictor."""
    if "background_threshold" not in metrics[variants[0]]["gt_classes"]:
        return rows  # background is a prompted word: no threshold
    at = next(i for i, r in enumerate(rows) if r["metric"] == "predictor (chosen on val)") + 1
    shown = {v: metrics[v]["gt_classes"]["background_threshold"] for v in variants}
    row = {"protocol": rows[at - 1]["protocol"], "metric": "background threshold × peak (chosen on val)"}
    return rows[:at] + [row | {v: "sigmoid ½" if t is None else f"{t:g}" for v, t in shown.items()}] + rows[at:]


def selection_protocol(params: Params) -> dict:
    """Returns where each choice was made and where the numbers come from, with image counts: the metrics' proof
    that no reported number was chosen on the images it reports (seg4diff.config.checks.protocol_problems)."""
    p = params.evaluate

    def images(split: str, cap: int | None) -> int:
        count = prepared_split(params, split).sizes["sample"]
        return min(count, cap or count)

    return {
        "expert_chosen_on": {
            "split": params.extract.split,
            "images": images(params.extract.split, params.extract.max_samples),
        },
        "reading_chosen_on": {"split": p.val_split, "images": images(p.val_split, p.val_samples)},
        "reported_on": {"split": p.split, "images": images(p.split, p.max_samples)},
    }


@stage_flow("evaluate")
def evaluate(params: Params, run) -> dict:
    """Evaluates the base model and, when an adapter exists, the fine-tuned one; returns the metrics written."""
    variants = ["base"] + (
        ["finetuned"] if (Path(params.finetune.output) / "adapter_model.safetensors").exists() else []
    )
    with gpu_request(params):
        futures = {v: evaluate_model_task.submit(params, v) for v in variants}
    results = {v: future.result() for v, future in futures.items()}
    metrics = {"expert": results["base"]["expert"]["layer"], "sigma": results["base"]["expert"]["sigma"]}
    metrics["protocol"] = selection_protocol(params)
    p = params.evaluate
    for variant, result in results.items():
        metrics[variant] = variant_metrics(result, p.bootstrap_resamples, p.seed)
        chosen = result["segmentation"]["gt_classes"]  # the reading's numbers beyond comparison.EXTRA's predictor
        metrics[variant]["gt_classes"] |= {k: chosen[k] for k in READING if k in chosen}
    if "finetuned" in results:
        metrics["finetuned_vs_base"] = paired_comparison(
            results["base"], results["finetuned"], p.bootstrap_resamples, p.seed
        )
    metrics = round_floats(metrics)  # as written
    mlflow.log_metrics(numeric_leaves({k: v for k, v in metrics.items() if k not in ("expert", "sigma", "protocol")}))
    rows = reading_rows(comparison_rows(metrics, variants), metrics, variants)
    header = "| protocol | metric | " + " | ".join(variants) + " |\n|---|---|" + "---:|" * len(variants)
    table = (
        header
        + "\n"
        + "\n".join(
            f"| {r['protocol']} | {r['metric']} | " + " | ".join(str(r[v]) for v in variants) + " |" for r in rows
        )
    )
    if "finetuned_vs_base" in metrics:
        table += (
            "\n\nFine-tuned − base, paired over the same test images (95% interval):\n\n| | Δ | 95% CI "
            "|\n|---|---:|---|\n"
            + "\n".join(
                f"| {name} | {v.get('delta_miou', v.get('delta')):+.4f} | [{v['ci'][0]:+.4f}, {v['ci'][1]:+.4f}] |"
                for name, v in metrics["finetuned_vs_base"].items()
            )
        )
    mlflow.log_text(table, "comparison.md")
    create_markdown_artifact(
        key="evaluation",
        markdown=f"# Evaluation, {p.split} split, layer {metrics['expert']}, σ={metrics['sigma']:g}\n\n{table}",
        description="Segmentation in %; intervals: paired bootstrap over test images",
    )
    test = prepared_split(params, params.evaluate.split)
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
    write_json(params.evaluate.output, metrics)
    return metrics


if __name__ == "__main__":
    main("evaluate", evaluate)
