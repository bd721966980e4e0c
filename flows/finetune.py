"""Stage `finetune`: MAGNET mask fine-tuning (LoRA) at the expert layer; the best adapter on validation is kept."""

from __future__ import annotations

import mlflow
from prefect.artifacts import create_markdown_artifact

from flows.cli import main
from flows.stages import Outcome, stage_flow
from seg4diff.config import Params
from seg4diff.data.prepared import prepared_split
from seg4diff.reporting.plots import loss_curve
from tasks.finetune import train_magnet_task


@stage_flow("finetune")
def finetune(params: Params, run) -> Outcome:
    """Trains the adapter (resuming from the newest checkpoint); returns the best validation numbers."""
    summary = train_magnet_task(params, run.info.run_id)
    history = summary["history"]
    trained = [h for h in history if "train_loss" in h]
    mlflow.log_figure(
        loss_curve([h["step"] for h in trained], [h["train_loss"] for h in trained], "MAGNET loss"), "loss_curve.png"
    )
    best = summary["best"]
    mlflow.log_metrics({f"best_{k}": float(v) for k, v in best.items()})
    mlflow.log_artifacts(params.finetune.output, "lora")
    create_markdown_artifact(
        key="finetune-best",
        markdown=(
            f"# MAGNET fine-tuning (layer {summary['expert']['layer']}, σ={summary['expert']['sigma']:g})\n\n"
            "| step | val mIoU | val flow loss |\n|---:|---:|---:|\n"
            + "\n".join(
                f"| {h['step']} | {h['val_miou']:.4f} | {h['val_flow_loss']:.4f} |" for h in history if "val_miou" in h
            )
        ),
    )
    f = params.finetune
    protocol = {  # what MAGNET read: its training images, and the images its best checkpoint was chosen on
        "trained_on": {"split": f.split, "images": prepared_split(params, f.split).sizes["sample"]},
        "checkpoint_chosen_on": {"split": f.val_split, "images": summary["validation_images"]},
    }
    # the best checkpoint's val numbers were chosen on those images: MLflow keeps them, the metrics file the choice
    return Outcome(best, {"step": best["step"], "protocol": protocol})


if __name__ == "__main__":
    main("finetune", finetune)
