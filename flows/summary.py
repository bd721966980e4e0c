"""`python -m flows.summary`: prints the expert layer, the headline metrics and where everything is."""

from __future__ import annotations

import json
from pathlib import Path

from flows.stages import STAGES
from flows.tracking import tracking_uri
from seg4diff.config import load_params
from seg4diff.evaluation.selection import read_expert

ROWS = (
    ("gt_classes", "open vocabulary, GT-class prompts"),
    ("vocabulary", "open vocabulary, whole vocabulary"),
    ("unsupervised_per_image_matching", "unsupervised, per-image matching"),
)


def _read(path: str) -> dict | None:
    file = Path(path)
    return json.loads(file.read_text()) if file.exists() else None


def main() -> None:
    params = load_params()
    print("\n== seg4diff results ==")
    expert = read_expert(params.select.output) if Path(params.select.output).exists() else None
    if expert:
        runner = expert.get("runner_up", {})
        print(
            f"expert layer: {expert['layer']} at σ={expert['sigma']:g}, mIoU {expert['miou']:.3f} "
            f"(95% CI {expert['ci_low']:.3f}–{expert['ci_high']:.3f}; rule {expert['rule']}"
            f"{', forced' if expert['forced'] else ''}); runner-up layer {runner.get('layer')} "
            f"{runner.get('miou', float('nan')):.3f}"
        )
        paired = expert.get("vs_runner_up")
        if paired:
            print(
                f"              expert − runner-up on the same val images: {paired['delta_miou']:+.3f} "
                f"[{paired['ci'][0]:+.3f}, {paired['ci'][1]:+.3f}] (paired bootstrap)"
            )
    causal = _read(STAGES["causal"].metrics)
    if causal and expert:
        print(
            f"\ncausal test (perturbing one layer's image→text attention during generation; {params.causal.split} "
            "captions):"
        )
        contrast = causal.get("primary_contrast")
        if contrast:
            print(
                f"  pre-registered: expert − other layers, {contrast['perturbation']} {contrast['metric']} at dose "
                f"{contrast['dose']}: {contrast['delta']:+.3f} [{contrast['ci'][0]:+.3f}, {contrast['ci'][1]:+.3f}]"
            )
        for key, v in causal.items():
            if ".dose_" not in key and v.get("expert_ci"):  # full strength here; every dose in metrics/causal.json
                print(
                    f"  {key:<34} expert Δ {v['expert_delta']:+.3f} [{v['expert_ci'][0]:+.3f}, "
                    f"{v['expert_ci'][1]:+.3f}], "
                    f"rank {v['expert_rank']} of {v['layers']} (most harmful: layer {v['most_harmful_layer']}, "
                    f"{v['most_harmful_delta']:+.3f})"
                )
    evaluation = _read(params.evaluate.output)
    if evaluation:
        variants = [v for v in ("base", "finetuned") if v in evaluation]
        print(
            f"\n| {params.evaluate.split} split, mIoU % [95% CI] | "
            + " | ".join(variants)
            + (" | fine-tuned − base [95% CI, paired] |" if "finetuned_vs_base" in evaluation else " |")
        )
        print("|---|" + "---:|" * (len(variants) + ("finetuned_vs_base" in evaluation)))
        for key, label in ROWS:
            cells = [
                f"{100 * evaluation[v][key]['miou']:.1f} "
                f"[{100 * evaluation[v][key]['miou_ci'][0]:.1f}–{100 * evaluation[v][key]['miou_ci'][1]:.1f}]"
                for v in variants
            ]
            if "finetuned_vs_base" in evaluation:
                d = evaluation["finetuned_vs_base"][key]
                cells.append(f"{100 * d['delta_miou']:+.2f} [{100 * d['ci'][0]:+.2f}, {100 * d['ci'][1]:+.2f}]")
            print(f"| {label} | " + " | ".join(cells) + " |")
        for metric in evaluation["base"]["fidelity"]:
            print(f"| {metric} | " + " | ".join(f"{evaluation[v]['fidelity'][metric]:.4f}" for v in variants) + " |")
        flow = evaluation.get("finetuned_vs_base", {}).get("heldout_flow_loss_relative")
        if flow:
            print(
                f"held-out flow loss, fine-tuned vs base: {100 * flow['delta']:+.2f}% [{100 * flow['ci'][0]:+.2f}, "
                f"{100 * flow['ci'][1]:+.2f}] (paired)"
            )
        chosen = {v: evaluation[v]["gt_classes"].get("predictor") for v in variants}
        if all(chosen.values()):
            print(
                "GT-class predictor, chosen on val: "
                + "; ".join(
                    f"{v} {chosen[v]} (val "
                    + ", ".join(f"{p} {m:.3f}" for p, m in evaluation[v]["gt_classes"]["val_miou_by_reading"].items())
                    + ")"
                    for v in variants
                )
            )
        never = evaluation["base"]["vocabulary"].get("never_predicted")
        if never:
            print(f"vocabulary protocol: {len(never)} classes never predicted by the base model ({', '.join(never)})")
    if Path(params.explore.output).exists():
        print(f"\nexplorer: open {Path(params.explore.output).resolve()} in a browser (self-contained, works offline)")
    print("\nmetrics:  dvc metrics show        plots: dvc plots show  (then open dvc_plots/index.html)")
    print(f"MLflow:   mlflow ui --backend-store-uri {tracking_uri(params.tracking)} --host 127.0.0.1 --port 5000")
    print(f"stores:   {params.prepare.output}/<split>.zarr, {params.extract.output}; adapter: {params.finetune.output}")


if __name__ == "__main__":
    main()
