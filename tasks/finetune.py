"""Task of the finetune stage: MAGNET LoRA training at the selected expert layer, validated on the val split."""

from __future__ import annotations

import time
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from prefect import task

from seg4diff.backbones.backbone import load_backbone, model_digest
from seg4diff.config import Params
from seg4diff.data.prepared import prepared_split, require_captions
from seg4diff.evaluation.selection import read_expert
from seg4diff.ownership import check_replaceable, remove_ours
from seg4diff.training.magnet import MagnetConfig, publish_adapter, train_magnet


def magnet_config(params: Params, expert: dict) -> MagnetConfig:
    return MagnetConfig.from_params(
        params.finetune, params.prompt, expert["layer"], expert["sigma"], model_digest(params.model)
    )


@task(name="train-magnet")
def train_magnet_task(params: Params, run_id: str) -> dict:
    """Trains (or resumes) the adapter; copies the best-on-validation one to finetune.output; returns the summary."""
    expert = read_expert(params.select.output)
    config = magnet_config(params, expert)
    client = MlflowClient()

    def log(step: int, metrics: dict) -> None:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    output = Path(params.finetune.output)
    check_replaceable(output, "finetune.output")  # refused before hours of training, not after
    train = prepared_split(params, params.finetune.split)
    if params.finetune.mode == "caption":
        require_captions(train, params.finetune.split, "finetune.mode 'caption'")
    summary = train_magnet(
        load_backbone(params.model),
        train,
        prepared_split(params, params.finetune.val_split),
        config,
        Path(params.finetune.work_dir),
        on_metrics=log,
    )
    publish_adapter(Path(params.finetune.work_dir) / "best", output)
    # finished: its checkpoints only served to resume it; a later run of these settings trains anew (new code too)
    remove_ours(Path(params.finetune.work_dir), "finetune.work_dir")
    return {**summary, "expert": expert}
