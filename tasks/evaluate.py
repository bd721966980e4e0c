"""Tasks of the evaluate stage: one model variant (base or fine-tuned) evaluated on the test split."""

from __future__ import annotations

import dask
import numpy as np
import torch
from prefect import task

from seg4diff.backbones.backbone import load_backbone
from seg4diff.config import Params
from seg4diff.data.prepared import prepared_split, require_captions
from seg4diff.evaluation.fidelity import clip_score, generate
from seg4diff.evaluation.flow_loss import flow_losses
from seg4diff.evaluation.protocols import choose_kl_threshold, evaluate_segmentation
from seg4diff.evaluation.selection import read_expert
from seg4diff.organism.shape_reader import prompt_reading
from seg4diff.prompts import prompt_style
from seg4diff.segmentation.zero_shot import Readout, choose_reading
from tasks.retry import RETRY_TRANSIENT


@task(name="evaluate-model", task_run_name="evaluate-{variant}", **RETRY_TRANSIENT)
def evaluate_model_task(params: Params, variant: str) -> dict:
    """Returns segmentation results, fidelity numbers and gallery predictions for 'base' or 'finetuned'."""
    with dask.config.set(scheduler="synchronous"):  # reads stay in this (possibly Dask worker) process
        return _evaluate_model(params, variant)


def _evaluate_model(params: Params, variant: str) -> dict:
    p = params.evaluate
    expert = read_expert(params.select.output)
    backbone = load_backbone(params.model, lora=params.finetune.output if variant == "finetuned" else None)
    test = prepared_split(params, p.split)
    style = prompt_style(params.prompt, "gt_classes")
    val = prepared_split(params, p.val_split)
    readout = Readout.for_expert(expert, params.prompt, p.seed)
    kl_threshold, kl_curve = choose_kl_threshold(backbone, val, readout, p.batch_size, p.kl_thresholds, p.val_samples)
    reading, reading_curve = choose_reading(
        backbone, val, readout, p.batch_size, p.predictors, p.background_thresholds, p.val_samples
    )
    results, gallery = evaluate_segmentation(
        backbone, test, readout, p.batch_size, kl_threshold, p.max_samples, gt_classes_readout=reading
    )
    results["gt_classes"] |= reading_metrics(reading, reading_curve)
    results["unsupervised_per_image_matching"]["val_miou_by_threshold"] = {str(t): m for t, m in kl_curve.items()}
    limit = min(test.sizes["sample"], p.max_samples or test.sizes["sample"])
    flow = flow_losses(backbone, test, p.seed, limit, style)
    fidelity = {"heldout_flow_loss": float(flow.mean())}
    if p.generation_samples:
        require_captions(test, p.split, "evaluate.generation_samples > 0 (generation fidelity)")
        captions = [str(c) for c in test["caption"].values[: p.generation_samples]]
        images = generate(backbone, captions, p.generation_steps, p.guidance, p.seed, test.sizes["y"])
        if backbone.family == "organism":  # Shapes captions name shapes and colours: read both off the images
            fidelity |= prompt_reading(images, captions, params.data.shapes.design)
        if p.clip_model:
            fidelity["clip_score"] = clip_score(images, captions, p.clip_model)
    shown = sorted(gallery)[: p.gallery]
    return {
        "variant": variant,
        "expert": expert,
        "segmentation": results,
        "fidelity": fidelity,
        "per_sample_flow_loss": flow,
        "gallery": {i: gallery[i].astype(np.uint8) for i in shown},
        "torch_threads": torch.get_num_threads(),
    }


def reading_label(reading: Readout) -> str:
    """Returns a candidate reading's name: 'probability 0.2' (predictor and background threshold) or 'logit'."""
    if reading.predictor == "probability" and reading.background_threshold is not None:
        return f"probability {reading.background_threshold:g}"
    return reading.predictor


def reading_metrics(reading: Readout, curve: dict[Readout, float]) -> dict:
    """Returns the GT-class reading chosen on val for the metrics: `predictor`, where prompts leave background out
    `background_threshold` (None when the `logit` predictor, with its own background rule, won), and
    `val_miou_by_reading`: every candidate's val mIoU — the whole curve the choice was made on, never the chosen
    value alone as if it were a result."""
    metrics = {"predictor": reading.predictor, "val_miou_by_reading": {reading_label(c): m for c, m in curve.items()}}
    if reading.background_threshold is not None:
        metrics["background_threshold"] = reading.background_threshold if reading.predictor == "probability" else None
    return metrics
