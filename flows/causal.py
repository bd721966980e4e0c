"""Stage `causal`: does the grounding expert also carry the prompt's meaning? Each layer's image→text attention is
perturbed during generation in turn; results/causal.csv, metrics/causal.json, a figure and examples in MLflow."""

from __future__ import annotations

import mlflow
import pandas as pd
from prefect.artifacts import create_markdown_artifact

from flows.cli import main
from flows.runners import gpu_request
from flows.stages import Outcome, stage_flow
from seg4diff.config import Params
from seg4diff.evaluation.causal import causal_summary
from seg4diff.evaluation.selection import head_mean_curve, read_expert
from seg4diff.reporting.outputs import round_floats, write_csv
from seg4diff.reporting.plots import causal_figure, image_grid
from tasks.causal import causal_task, example_panels


@stage_flow("causal")
def causal(params: Params, run) -> Outcome:
    """Writes causal.output and metrics/causal.json; returns the summary."""
    expert = read_expert(params.select.output)
    with gpu_request(params):
        table, examples = causal_task(params)
    summary = causal_summary(table, expert["layer"])
    write_csv(table, params.causal.output)
    mlflow.log_artifact(params.causal.output)
    mlflow.log_figure(
        causal_figure(table, head_mean_curve(pd.read_csv(params.score.output), expert["sigma"]), expert["layer"]),
        "causal.png",
    )
    layers = sorted(table.layer.unique().tolist())
    for kind in table.perturbation.unique():
        panels, titles = example_panels(examples, layers, kind)
        mlflow.log_figure(image_grid(panels, titles, columns=1 + len(layers)), f"causal_examples_{kind}.png")
    mlflow.log_metrics({f"{key}.expert_delta": value["expert_delta"] for key, value in summary.items()})
    lines = [
        f"| {key} | {v['most_harmful_layer']} ({v['most_harmful_delta']:+.3f}) | {v['expert_delta']:+.3f} "
        f"[{v['expert_ci'][0]:+.3f}, {v['expert_ci'][1]:+.3f}] | {v['expert_rank']} of {v['layers']} |"
        for key, v in summary.items()
    ]
    create_markdown_artifact(
        key="causal-analysis",
        markdown=(
            f"# Causal test of the expert (layer {expert['layer']})\n\nPerturbing one layer's image→text attention "
            "during "
            "generation; paired differences vs the unperturbed model, 95% bootstrap intervals.\n\n"
            "| perturbation.metric | most harmful layer (Δ) | expert Δ [95% CI] | expert's rank |\n|---|---|---|---|\n"
            + "\n".join(lines)
        ),
        description="Full table: results/causal.csv",
    )
    summary = round_floats(summary)
    return Outcome(summary)


if __name__ == "__main__":
    main("causal", causal)
