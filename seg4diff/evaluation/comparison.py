"""Base vs fine-tuned: per-model numbers with bootstrap intervals and paired differences over the same test images."""

from __future__ import annotations

import numpy as np

from seg4diff.evaluation.statistics import miou_interval, paired_mean_difference, paired_miou_difference

PROTOCOLS = {
    "gt_classes": "open vocabulary, GT-class prompts (oracle, as Seg4Diff)",
    "vocabulary": "open vocabulary, whole vocabulary, one normalisation",
    "unsupervised_per_image_matching": "unsupervised, Hungarian per image (DiffSeg)",
}


EXTRA = {
    "gt_classes": ("predictor", "val_miou_by_reading"),
    "vocabulary": ("prompts", "never_predicted", "predicted_pixels"),
    "unsupervised_per_image_matching": ("kl_threshold", "clusters_per_image", "val_miou_by_threshold"),
}


def variant_metrics(result: dict, resamples: int, seed: int) -> dict:
    """One variant's numbers: per protocol mIoU, mAcc, pAcc and the mIoU's 95% bootstrap interval over test images."""
    metrics = {}
    for protocol in PROTOCOLS:
        segmentation = result["segmentation"][protocol]
        low, high = miou_interval(segmentation["stats"], resamples, seed)
        metrics[protocol] = (
            {k: segmentation[k] for k in ("miou", "macc", "pacc")}
            | {"miou_ci": [low, high]}
            | {k: segmentation[k] for k in EXTRA.get(protocol, ()) if k in segmentation}
        )
    return metrics | {"fidelity": dict(result["fidelity"])}


def paired_comparison(base: dict, other: dict, resamples: int, seed: int) -> dict:
    """other − base on the same test images: mIoU per protocol and the relative held-out flow loss, with 95%
    intervals."""
    comparison = {}
    for protocol in PROTOCOLS:
        d = paired_miou_difference(
            base["segmentation"][protocol]["stats"], other["segmentation"][protocol]["stats"], resamples, seed
        )
        comparison[protocol] = {"delta_miou": d["delta"], "ci": [d["ci_low"], d["ci_high"]]}
    reference = base["per_sample_flow_loss"]
    d = paired_mean_difference(
        np.zeros_like(reference), (other["per_sample_flow_loss"] - reference) / reference, resamples, seed
    )
    comparison["heldout_flow_loss_relative"] = {"delta": d["delta"], "ci": [d["ci_low"], d["ci_high"]]}
    return comparison


def comparison_rows(metrics: dict, variants: list[str]) -> list[dict]:
    """Returns one row per protocol and metric with a column per model variant (segmentation in %)."""
    rows = []
    for protocol, label in PROTOCOLS.items():
        for metric in ("miou", "macc", "pacc"):
            rows.append(
                {
                    "protocol": label,
                    "metric": metric,
                    **{v: round(100 * metrics[v][protocol][metric], 2) for v in variants},
                }
            )
        rows.append(
            {
                "protocol": label,
                "metric": "miou 95% CI",
                **{v: "–".join(f"{100 * x:.1f}" for x in metrics[v][protocol]["miou_ci"]) for v in variants},
            }
        )
        if "predictor" in metrics[variants[0]][protocol]:
            rows.append(
                {
                    "protocol": label,
                    "metric": "predictor (chosen on val)",
                    **{v: metrics[v][protocol]["predictor"] for v in variants},
                }
            )
    for metric in metrics[variants[0]]["fidelity"]:
        rows.append(
            {
                "protocol": "generation fidelity",
                "metric": metric,
                **{v: round(metrics[v]["fidelity"][metric], 4) for v in variants},
            }
        )
    return rows
