"""Stage `finetune`: MAGNET mask fine-tuning (LoRA) at the expert layer; the best adapter on validation is kept."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from seg4diff.config import load_params
from seg4diff.plots import loss_curve
from seg4diff.tracking import stage_run
from tasks.finetune import train_magnet_task

METRICS = Path("metrics/finetune.json")


@flow(name="finetune")
def finetune(params_path: str = "params.yaml", overrides: dict | None = None) -> dict:
    """Trains the adapter (resuming from the newest checkpoint); returns the best validation numbers."""
    params = load_params(params_path, overrides)
    with stage_run("finetune", params, ("finetune",)) as run:
        summary = train_magnet_task(params, run.info.run_id)
        history = summary["history"]
        trained = [h for h in history if "train_loss" in h]
        mlflow.log_figure(loss_curve([h["step"] for h in trained], [h["train_loss"] for h in trained], "MAGNET loss"), "loss_curve.png")
        best = summary["best"]
        mlflow.log_metrics({f"best_{k}": float(v) for k, v in best.items()})
        mlflow.log_artifacts(params.finetune.output, "lora")
        create_markdown_artifact(key="finetune-best", markdown=(
            f"# MAGNET fine-tuning (block {summary['expert']['layer']}, σ={summary['expert']['timestep']:g})\n\n"
            "| step | val mIoU | val flow loss |\n|---:|---:|---:|\n"
            + "\n".join(f"| {h['step']} | {h['val_miou']:.4f} | {h['val_flow_loss']:.4f} |" for h in history if "val_miou" in h)))
    METRICS.parent.mkdir(exist_ok=True)
    METRICS.write_text(json.dumps({k: round(float(v), 5) for k, v in best.items()}, indent=2))
    return best


if __name__ == "__main__":
    finetune()
