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


def class_statistics(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Returns (…, 3, num_classes) int64 per-class [true positives, label area, prediction area] of every leading
    prediction (…, H, W) against one target (H, W): O(classes) where a confusion matrix is O(classes²), and as additive
    over images (IoU_c = TP / (label + prediction − TP) of the sums)."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape[-target.ndim:] != target.shape:
        raise ValueError(f"prediction shape {pred.shape} does not end with target shape {target.shape}")
    leading = pred.shape[: pred.ndim - target.ndim]
    valid = target != ignore_index
    truth = target[valid].astype(np.int64)
    flat = pred.reshape(-1, target.size)[:, valid.ravel()].astype(np.int64)
    if truth.size and (truth.min() < 0 or truth.max() >= num_classes):
        raise ValueError(f"target holds class ids outside 0..{num_classes - 1} (ignore index {ignore_index} aside)")
    if flat.size and (flat.min() < 0 or flat.max() >= num_classes):
        raise ValueError(f"prediction holds class ids outside 0..{num_classes - 1}")
    count = flat.shape[0]
    keyed = flat + np.arange(count)[:, None] * num_classes
    predicted = np.bincount(keyed.ravel(), minlength=count * num_classes).reshape(count, num_classes)
    hits = np.bincount(keyed[flat == truth].ravel(), minlength=count * num_classes).reshape(count, num_classes)
    labelled = np.broadcast_to(np.bincount(truth, minlength=num_classes), (count, num_classes))
    return np.stack([hits, labelled, predicted], axis=1).reshape(*leading, 3, num_classes)


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
