"""Stage `finetune`: MAGNET mask fine-tuning (LoRA) at the expert layer; the best adapter on validation is kept."""
from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.cli import main
from flows.tracking import stage_run
from seg4diff.config import load_params
from seg4diff.reporting.outputs import write_json
from seg4diff.reporting.plots import loss_curve
from tasks.finetune import train_magnet_task

METRICS = Path("metrics/finetune.json")


@flow(name="finetune")
def finetune(params_path: str = "params.yaml", presets: list[str] | None = None, overrides: dict | None = None) -> dict:
    """Trains the adapter (resuming from the newest checkpoint); returns the best validation numbers."""
    params = load_params(params_path, overrides, presets or ())
    with stage_run("finetune", params, ("finetune",)) as run:
        summary = train_magnet_task(params, run.info.run_id)
        history = summary["history"]
        trained = [h for h in history if "train_loss" in h]
        mlflow.log_figure(loss_curve([h["step"] for h in trained], [h["train_loss"] for h in trained], "MAGNET loss"), "loss_curve.png")
        best = summary["best"]
        mlflow.log_metrics({f"best_{k}": float(v) for k, v in best.items()})
        mlflow.log_artifacts(params.finetune.output, "lora")
        create_markdown_artifact(key="finetune-best", markdown=(
            f"# MAGNET fine-tuning (layer {summary['expert']['layer']}, σ={summary['expert']['sigma']:g})\n\n"
            "| step | val mIoU | val flow loss |\n|---:|---:|---:|\n"
            + "\n".join(f"| {h['step']} | {h['val_miou']:.4f} | {h['val_flow_loss']:.4f} |" for h in history if "val_miou" in h)))
    write_json(METRICS, {k: float(v) for k, v in best.items()})
    return best


if __name__ == "__main__":
    main("finetune", finetune)
