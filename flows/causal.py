"""Stage `causal`: does the grounding expert also carry the prompt's meaning? Each layer's image→text attention is
perturbed during generation in turn, at full strength and at matched doses; results/causal.csv, metrics/causal.json,
figures and examples in MLflow."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from prefect.artifacts import create_markdown_artifact

from flows.cli import main
from flows.runners import gpu_request
from flows.stages import Outcome, stage_flow
from seg4diff.config import Params
from seg4diff.evaluation.causal_table import FULL, causal_summary, dose_label
from seg4diff.evaluation.selection import head_mean_curve, read_expert
from seg4diff.ownership import remove_ours
from seg4diff.reporting.outputs import round_floats, write_csv
from seg4diff.reporting.plots import causal_figure, image_grid
from tasks.causal import causal_task, example_panels


@stage_flow("causal")
def causal(params: Params, run) -> Outcome:
    """Writes causal.output and metrics/causal.json; returns the summary."""
    expert = read_expert(params.select.output)
    with gpu_request(params):
        table, examples = causal_task(params, expert["layer"])
    summary = causal_summary(table, expert["layer"], params.causal.primary_contrast)
    write_csv(table, params.causal.output)
    mlflow.log_artifact(params.causal.output)
    grounding = head_mean_curve(pd.read_csv(params.score.output), expert["sigma"])
    per_layer = table[table.comparison == "vs_unperturbed"]
    matched = dose_label(max(params.causal.doses))  # the largest matched dose: comparable across layers
    for name, rows in {
        "causal.png": per_layer[per_layer.dose == matched],
        "causal_full.png": per_layer[per_layer.dose == FULL],
    }.items():
        mlflow.log_figure(causal_figure(rows, grounding, expert["layer"]), name)
    for kind in params.causal.perturbations:  # dose–response: one series per dose
        rows = per_layer[per_layer.perturbation == kind]
        mlflow.log_figure(
            causal_figure(rows.assign(perturbation="dose " + rows.dose), grounding, expert["layer"]),
            f"causal_dose_{kind}.png",
        )
    layers = sorted(table.layer.unique().tolist())
    for kind in params.causal.perturbations:
        panels, titles = example_panels(examples, layers, kind)
        mlflow.log_figure(image_grid(panels, titles, columns=1 + len(layers)), f"causal_examples_{kind}.png")
    mlflow.log_metrics(
        {f"{key}.expert_delta": value["expert_delta"] for key, value in summary.items() if "expert_delta" in value}
    )
    lines = [
        f"| {key} | {v['most_harmful_layer']} ({v['most_harmful_delta']:+.3f}) | {v['expert_delta']:+.3f} "
        f"[{v['expert_ci'][0]:+.3f}, {v['expert_ci'][1]:+.3f}] | {v['expert_p_holm']:.3g} | "
        f"{_contrast_text(v['expert_vs_others'])} | {v['expert_rank']} of {v['layers']} |"
        for key, v in summary.items()
        if v.get("expert_ci")
    ]
    primary = summary.get("primary_contrast")
    headline = (
        f"Pre-registered contrast ({primary['perturbation']} at dose {primary['dose']}, {primary['metric']}): expert − "
        f"mean of the other layers {_contrast_text(primary)}.\n\n"
        if primary
        else ""
    )
    create_markdown_artifact(
        key="causal-analysis",
        markdown=(
            f"# Causal test of the expert (layer {expert['layer']})\n\nPerturbing one layer's image→text attention "
            "during generation, at full strength and at doses matched across layers (a fraction of the weakest "
            "layer's full-strength L1); paired differences vs the unperturbed model, 95% bootstrap intervals, "
            "Holm-adjusted p over layers × perturbations per metric and dose.\n\n"
            + headline
            + "| perturbation.metric | most harmful layer (Δ) | expert Δ [95% CI] | expert p (Holm) | "
            "expert − others [95% CI] | expert's rank |\n|---|---|---|---|---|---|\n" + "\n".join(lines)
        ),
        description="Full table: results/causal.csv",
    )
    remove_ours(Path(params.causal.work_dir), "causal.work_dir")  # written: a later run measures anew
    return Outcome(round_floats(summary))


def _contrast_text(contrast: dict | None) -> str:
    if not contrast:
        return "—"
    return (
        f"{contrast['delta']:+.3f} [{contrast['ci'][0]:+.3f}, {contrast['ci'][1]:+.3f}] (p {contrast['p_value']:.3g})"
    )


if __name__ == "__main__":
    main("causal", causal)
