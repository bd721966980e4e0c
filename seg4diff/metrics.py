"""Segmentation metrics over a dataset-level confusion matrix (mmsegmentation's IoU metric definitions)."""
from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Returns the (num_classes, num_classes) int64 matrix, rows = ground truth, columns = prediction.

    Pixels whose target is `ignore_index` are skipped. Matrices of several images add up to the dataset's.
    """
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
    valid = target != ignore_index
    target, pred = target[valid].astype(np.int64), pred[valid].astype(np.int64)
    for name, values in (("target", target), ("prediction", pred)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} holds class ids outside 0..{num_classes - 1} (ignore index {ignore_index} aside)")
    return np.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def summarize(confusion: np.ndarray) -> dict:
    """Returns miou, macc, pacc (fractions) and per-class iou / acc (NaN where undefined).

    IoU_c = TP / (TP + FP + FN), NaN when class c is absent from both prediction and ground truth (excluded from
    the mean); Acc_c = TP / (TP + FN), NaN when c is absent from the ground truth; pacc = ΣTP / Σ labelled pixels.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    label_area, pred_area = confusion.sum(axis=1), confusion.sum(axis=0)
    union = label_area + pred_area - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(label_area > 0, tp / label_area, np.nan)
    total = confusion.sum()
    nan_mean = lambda values: float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")  # noqa: E731
    return {"miou": nan_mean(iou), "macc": nan_mean(acc), "pacc": float(tp.sum() / total) if total else float("nan"),
            "iou": iou, "acc": acc}
