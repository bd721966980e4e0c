"""Stage `score`: zero-shot grounding mIoU for every (layer, σ, head), with bootstrap intervals and figures."""
from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.cli import main
from flows.tracking import stage_run
from seg4diff.config import load_params
from seg4diff.reporting.outputs import write_json
from tasks.score import example_maps_task, score_layers_task, write_scores_task

METRICS = Path("metrics/score.json")


@flow(name="score")
def score(params_path: str = "params.yaml", presets: list[str] | None = None, overrides: dict | None = None) -> dict:
    """Scores every layer of the attention store; returns the headline numbers."""
    params = load_params(params_path, overrides, presets or ())
    with stage_run("score", params, ("score",)):
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
        create_markdown_artifact(key="layer-scores", markdown=f"# Layer-wise grounding\n\n| | |\n|---|---:|\n{table}",
                                 description="Best layer and reference rows; full table in results/layer_scores.csv")
    write_json(METRICS, {k: float(v) for k, v in headline.items()})
    return headline


if __name__ == "__main__":
    main("score", score)
