"""Segmentation metrics over a dataset-level confusion matrix (mmsegmentation's IoU metric definitions)."""

from __future__ import annotations

import numpy as np

from seg4diff.data.sample import IGNORE_INDEX


def confusion_matrix(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
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


def class_statistics(
    pred: np.ndarray,
    target: np.ndarray,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    predicted_classes: np.ndarray | None = None,
) -> np.ndarray:
    """Returns (…, 3, num_classes) int64 per-class [true positives, label area, prediction area] of every leading
    prediction (…, H, W) against one target (H, W): O(classes) where a confusion matrix is O(classes²), and as additive
    over images (IoU_c = TP / (label + prediction − TP) of the sums).

    `predicted_classes`: the only ids the predictions can hold (a prompt's classes, and background), when known: then
    only those are counted, a few passes over the pixels instead of a histogram of every prediction.
    """
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape[-target.ndim :] != target.shape:
        raise ValueError(f"prediction shape {pred.shape} does not end with target shape {target.shape}")
    leading = pred.shape[: pred.ndim - target.ndim]
    valid = target != ignore_index
    truth = target[valid]
    flat = pred.reshape(-1, target.size)[:, valid.ravel()]
    if truth.size and (truth.min() < 0 or truth.max() >= num_classes):
        raise ValueError(f"target holds class ids outside 0..{num_classes - 1} (ignore index {ignore_index} aside)")
    candidates = np.unique(flat) if predicted_classes is None else np.asarray(predicted_classes)
    if candidates.size and (candidates.min() < 0 or candidates.max() >= num_classes):
        raise ValueError(f"prediction holds class ids outside 0..{num_classes - 1}")
    stats = np.zeros((flat.shape[0], 3, num_classes), np.int64)
    stats[:, 1] = np.bincount(truth.astype(np.int64), minlength=num_classes)
    for class_id in candidates:
        predicted = flat == class_id
        stats[:, 2, class_id] = predicted.sum(axis=-1)
        stats[:, 0, class_id] = (predicted & (truth == class_id)).sum(axis=-1)
    return stats.reshape(*leading, 3, num_classes)


def class_iou(stats: np.ndarray) -> np.ndarray:
    """Returns (…, C) IoU per class from (…, 3, C) class statistics: TP / (label + prediction − TP), NaN where the
    union is empty (the class absent from both). The one IoU formula of the project."""
    stats = np.asarray(stats, dtype=np.float64)
    tp, labelled, predicted = stats[..., 0, :], stats[..., 1, :], stats[..., 2, :]
    union = labelled + predicted - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def confusion_statistics(confusion: np.ndarray) -> np.ndarray:
    """Returns (3, C) [true positives, label area, prediction area] of a (C, C) confusion matrix (rows: ground
    truth)."""
    confusion = np.asarray(confusion)
    return np.stack([np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0)])


def summarize_statistics(stats: np.ndarray) -> dict:
    """Returns miou, macc, pacc (fractions) and per-class iou / acc (NaN where undefined) of (…, 3, C) class
    statistics summed over their leading axes (images).

    IoU_c = TP / (TP + FP + FN), NaN when class c is absent from both prediction and ground truth (excluded from
    the mean); Acc_c = TP / (TP + FN), NaN when c is absent from the ground truth; pacc = ΣTP / Σ labelled pixels.
    """
    stats = np.asarray(stats, dtype=np.float64).reshape(-1, *np.shape(stats)[-2:]).sum(axis=0)
    tp, labelled = stats[0], stats[1]
    iou = class_iou(stats)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(labelled > 0, tp / labelled, np.nan)
    nan_mean = lambda values: float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")  # noqa: E731
    return {
        "miou": nan_mean(iou),
        "macc": nan_mean(acc),
        "pacc": float(tp.sum() / labelled.sum()) if labelled.sum() else float("nan"),
        "iou": iou,
        "acc": acc,
    }


def summarize(confusion: np.ndarray) -> dict:
    """Returns summarize_statistics of a dataset-level (C, C) confusion matrix (rows: ground truth)."""
    return summarize_statistics(confusion_statistics(confusion))


def miou_of(stats: np.ndarray) -> np.ndarray:
    """Returns the mIoU of every (…, 3, C) class-statistics array at once (metrics.class_statistics; classes with an
    empty union excluded)."""
    iou = class_iou(stats)
    with np.errstate(invalid="ignore"):
        return np.nanmean(np.where(np.isnan(iou).all(-1, keepdims=True), 0, iou), axis=-1)
