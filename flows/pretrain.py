"""Stage `pretrain`: train the Shapes organism (the embedded default model) and check that it reads its captions."""

from __future__ import annotations

import mlflow
from prefect.artifacts import create_markdown_artifact

from flows.cli import main
from flows.stages import Outcome, stage_flow
from seg4diff.config import Params
from seg4diff.reporting.plots import image_grid, loss_curve
from tasks.pretrain import check_organism_task, train_organism_task


@stage_flow("pretrain")
def pretrain(params: Params, run) -> Outcome:
    """Trains and saves the organism; returns its held-out checks."""
    log = train_organism_task(params, run.info.run_id)
    mlflow.log_figure(loss_curve(log["steps"], log["losses"], "organism flow-matching loss"), "loss_curve.png")
    checks = check_organism_task(params)
    mlflow.log_figure(image_grid(checks.pop("samples"), checks.pop("captions")), "samples.png")
    checks["train_seconds"] = log["seconds"]
    checks["final_train_loss"] = log["losses"][-1]
    mlflow.log_metrics(checks)
    table = "\n".join(f"| {k} | {v:.4f} |" for k, v in checks.items())
    create_markdown_artifact(
        key="pretrain-checks", markdown=f"# Organism checks\n\n| check | value |\n|---|---:|\n{table}"
    )
    return Outcome(checks)


if __name__ == "__main__":
    main("pretrain", pretrain)
