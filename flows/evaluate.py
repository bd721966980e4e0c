"""Stage `evaluate`: base vs fine-tuned on the test split — open vocabulary (both prompt protocols), unsupervised
(both matching protocols), generation fidelity — into metrics/evaluate.json, a table and a mask-overlay gallery."""
from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.cli import main
from flows.runners import gpu_request
from flows.tracking import numeric_leaves, stage_run
from seg4diff.config import load_params
from seg4diff.data.prepared import native_label, open_split
from seg4diff.evaluation.statistics import miou_interval, paired_mean_difference, paired_miou_difference
from seg4diff.reporting.outputs import round_floats, write_json
from seg4diff.reporting.plots import image_grid, overlay
from tasks.evaluate import evaluate_model_task

PROTOCOLS = {
    "gt_classes": "open vocabulary, GT-class prompts (oracle, as Seg4Diff)",
    "vocabulary": "open vocabulary, whole vocabulary, one normalisation",
    "unsupervised_per_image_matching": "unsupervised, Hungarian per image (DiffSeg)",
}
EXTRA = {"gt_classes": ("predictor", "val_miou_by_predictor"),
         "vocabulary": ("prompts", "never_predicted", "predicted_pixels"),
         "unsupervised_per_image_matching": ("kl_threshold", "clusters_per_image", "val_miou_by_threshold")}


def variant_metrics(result: dict, resamples: int, seed: int) -> dict:
    """One variant's numbers: per protocol mIoU, mAcc, pAcc and the mIoU's 95% bootstrap interval over test images."""
    metrics = {}
    for protocol in PROTOCOLS:
        segmentation = result["segmentation"][protocol]
        low, high = miou_interval(segmentation["stats"], resamples, seed)
        metrics[protocol] = {k: segmentation[k] for k in ("miou", "macc", "pacc")} | {"miou_ci": [low, high]} | {
            k: segmentation[k] for k in EXTRA.get(protocol, ()) if k in segmentation}
    return metrics | {"fidelity": dict(result["fidelity"])}


def paired_comparison(base: dict, other: dict, resamples: int, seed: int) -> dict:
    """other − base on the same test images: mIoU per protocol and the relative held-out flow loss, with 95% intervals."""
    comparison = {}
    for protocol in PROTOCOLS:
        d = paired_miou_difference(base["segmentation"][protocol]["stats"], other["segmentation"][protocol]["stats"], resamples, seed)
        comparison[protocol] = {"delta_miou": d["delta"], "ci": [d["ci_low"], d["ci_high"]]}
    reference = base["per_sample_flow_loss"]
    d = paired_mean_difference(np.zeros_like(reference), (other["per_sample_flow_loss"] - reference) / reference, resamples, seed)
    comparison["heldout_flow_loss_relative"] = {"delta": d["delta"], "ci": [d["ci_low"], d["ci_high"]]}
    return comparison


def comparison_rows(metrics: dict, variants: list[str]) -> list[dict]:
    """Returns one row per protocol and metric with a column per model variant (segmentation in %)."""
    rows = []
    for protocol, label in PROTOCOLS.items():
        for metric in ("miou", "macc", "pacc"):
            rows.append({"protocol": label, "metric": metric, **{v: round(100 * metrics[v][protocol][metric], 2) for v in variants}})
        rows.append({"protocol": label, "metric": "miou 95% CI",
                     **{v: "–".join(f"{100 * x:.1f}" for x in metrics[v][protocol]["miou_ci"]) for v in variants}})
        if "predictor" in metrics[variants[0]][protocol]:
            rows.append({"protocol": label, "metric": "predictor (chosen on val)", **{v: metrics[v][protocol]["predictor"] for v in variants}})
    for metric in metrics[variants[0]]["fidelity"]:
        rows.append({"protocol": "generation fidelity", "metric": metric, **{v: round(metrics[v]["fidelity"][metric], 4) for v in variants}})
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
        metrics = {"expert": results["base"]["expert"]["layer"], "sigma": results["base"]["expert"]["sigma"]}
        p = params.evaluate
        for variant, result in results.items():
            metrics[variant] = variant_metrics(result, p.bootstrap_resamples, p.seed)
        if "finetuned" in results:
            metrics["finetuned_vs_base"] = paired_comparison(results["base"], results["finetuned"], p.bootstrap_resamples, p.seed)
        metrics = round_floats(metrics)  # as written
        mlflow.log_metrics(numeric_leaves({k: v for k, v in metrics.items() if k not in ("expert", "sigma")}))
        rows = comparison_rows(metrics, variants)
        header = "| protocol | metric | " + " | ".join(variants) + " |\n|---|---|" + "---:|" * len(variants)
        table = header + "\n" + "\n".join(f"| {r['protocol']} | {r['metric']} | " + " | ".join(str(r[v]) for v in variants) + " |" for r in rows)
        if "finetuned_vs_base" in metrics:
            table += "\n\nFine-tuned − base, paired over the same test images (95% interval):\n\n| | Δ | 95% CI |\n|---|---:|---|\n" + "\n".join(
                f"| {name} | {v.get('delta_miou', v.get('delta')):+.4f} | [{v['ci'][0]:+.4f}, {v['ci'][1]:+.4f}] |"
                for name, v in metrics["finetuned_vs_base"].items())
        mlflow.log_text(table, "comparison.md")
        create_markdown_artifact(key="evaluation", markdown=f"# Evaluation, {p.split} split, layer {metrics['expert']}, σ={metrics['sigma']:g}\n\n{table}",
                                 description="Segmentation in %; intervals: paired bootstrap over test images")
        test = open_split(params.prepare.output, params.evaluate.split)
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
