"""Stage `pretrain`: train the Shapes organism (the embedded default model) and check that it reads its captions."""
from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.cli import main
from flows.tracking import stage_run
from seg4diff.config import load_params
from seg4diff.reporting.outputs import write_json
from seg4diff.reporting.plots import image_grid, loss_curve
from tasks.pretrain import check_organism_task, train_organism_task

METRICS = Path("metrics/pretrain.json")


@flow(name="pretrain")
def pretrain(params_path: str = "params.yaml", presets: list[str] | None = None, overrides: dict | None = None) -> dict:
    """Trains and saves the organism; returns its held-out checks."""
    params = load_params(params_path, overrides, presets or ())
    with stage_run("pretrain", params, ("pretrain",)) as run:
        log = train_organism_task(params, run.info.run_id)
        mlflow.log_figure(loss_curve(log["steps"], log["losses"], "organism flow-matching loss"), "loss_curve.png")
        checks = check_organism_task(params)
        mlflow.log_figure(image_grid(checks.pop("samples"), checks.pop("captions")), "samples.png")
        checks["train_seconds"] = log["seconds"]
        checks["final_train_loss"] = log["losses"][-1]
        mlflow.log_metrics(checks)
        table = "\n".join(f"| {k} | {v:.4f} |" for k, v in checks.items())
        create_markdown_artifact(key="pretrain-checks", markdown=f"# Organism checks\n\n| check | value |\n|---|---:|\n{table}")
    write_json(METRICS, checks)
    return checks


if __name__ == "__main__":
    main("pretrain", pretrain)
