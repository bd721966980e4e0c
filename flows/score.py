"""Stage `score`: zero-shot grounding mIoU for every (layer, σ, head), with bootstrap intervals and figures."""

from __future__ import annotations

import mlflow
from prefect.artifacts import create_markdown_artifact

from flows.cli import main
from flows.stages import Outcome, stage_flow
from seg4diff.config import Params
from tasks.score import example_maps_task, score_layers_task, write_scores_task


@stage_flow("score")
def score(params: Params, run) -> Outcome:
    """Scores every layer of the attention store; returns the headline numbers."""
    tables = score_layers_task(params)
    written = write_scores_task(params, tables)
    headline = written["headline"]
    for name, figure in written["figures"].items():
        mlflow.log_figure(figure, name)
    if params.score.examples:
        key = "image_to_text" if "image_to_text" in tables.directions else tables.directions[0]
        figure = example_maps_task(params, headline[f"{key}.best_layer"], headline[f"{key}.best_sigma"])
        mlflow.log_figure(figure, "example_maps.png")
    mlflow.log_artifact(params.score.output)
    mlflow.log_metrics({k: float(v) for k, v in headline.items()})
    table = "\n".join(f"| {k} | {v:.4g} |" for k, v in headline.items())
    create_markdown_artifact(
        key="layer-scores",
        markdown=f"# Layer-wise grounding\n\n| | |\n|---|---:|\n{table}",
        description="Best layer and reference rows; full table in results/layer_scores.csv",
    )
    return Outcome(headline, {k: float(v) for k, v in headline.items()})


if __name__ == "__main__":
    main("score", score)
