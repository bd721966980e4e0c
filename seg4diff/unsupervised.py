"""Unsupervised segmentation from empty-prompt attention, and Hungarian matching to ground truth both ways.

Maps: per-pixel min–max over tokens, a spatial softmax per token map, greedy merging of maps whose symmetric KL
is below a threshold, argmax. A cluster is named by its first token position, so cluster ids mean the same thing
in every image and can be matched once over the whole dataset (STEGO) or per image (DiffSeg).
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from seg4diff.masks import upsample
from seg4diff.metrics import confusion_matrix, summarize


def merge_token_maps(maps: np.ndarray, kl_threshold: float, size: int | tuple[int, int], eps: float = 1e-8) -> np.ndarray:
    """Returns a cluster map of `size` (height, width) for one image's (token, y, x) attention; values are leader token indices."""
    maps = maps.astype(np.float64)
    low, high = maps.min(axis=0, keepdims=True), maps.max(axis=0, keepdims=True)
    normalised = (maps - low) / (high - low + eps)
    flat = normalised.reshape(len(maps), -1)
    distributions = np.exp(flat - flat.max(axis=1, keepdims=True))
    distributions /= distributions.sum(axis=1, keepdims=True)
    leaders, members = [], []
    for token, p in enumerate(distributions):
        for group, leader in enumerate(leaders):
            q = distributions[members[group]].mean(axis=0)
            symmetric_kl = 0.5 * (np.sum(p * np.log((p + eps) / (q + eps))) + np.sum(q * np.log((q + eps) / (p + eps))))
            if symmetric_kl < kl_threshold:
                members[group].append(token)
                break
        else:
            leaders.append(token)
            members.append([token])
    group_maps = np.stack([normalised[m].mean(axis=0) for m in members]).astype(np.float32)
    return np.asarray(leaders)[upsample(group_maps, size).argmax(axis=0)]


def _matched_summary(confusion: np.ndarray, num_classes: int) -> dict:
    """Summary over the real classes of a (C+1)×(C+1) matrix whose last column counts unmatched-cluster pixels."""
    result = summarize(confusion)
    iou, acc = result["iou"][:num_classes], result["acc"][:num_classes]
    return {"miou": float(np.nanmean(iou)), "macc": float(np.nanmean(acc)), "pacc": result["pacc"], "iou": iou}


def match_dataset(clusters: list[np.ndarray], labels: list[np.ndarray], num_clusters: int, num_classes: int) -> dict:
    """STEGO's protocol: one Hungarian matching of clusters to classes over the dataset-level overlap matrix."""
    overlap = np.zeros((num_clusters, num_classes), np.int64)
    for cluster, label in zip(clusters, labels):
        valid = label != 255
        overlap += np.bincount(cluster[valid] * num_classes + label[valid], minlength=num_clusters * num_classes).reshape(num_clusters, num_classes)
    rows, cols = linear_sum_assignment(-overlap)
    mapping = np.full(num_clusters, num_classes)  # unmatched clusters → "none"
    mapping[rows] = cols
    confusion = sum(confusion_matrix(mapping[c], l, num_classes + 1) for c, l in zip(clusters, labels))
    return _matched_summary(confusion, num_classes)


def match_per_image(clusters: list[np.ndarray], labels: list[np.ndarray], num_classes: int) -> dict:
    """DiffSeg's protocol: each image's clusters matched to its own classes, then one dataset-level confusion matrix."""
    confusion = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    for cluster, label in zip(clusters, labels):
        ids = np.unique(cluster)
        local = np.searchsorted(ids, cluster)
        valid = label != 255
        overlap = np.bincount(local[valid] * num_classes + label[valid], minlength=len(ids) * num_classes).reshape(len(ids), num_classes)
        rows, cols = linear_sum_assignment(-overlap)
        mapping = np.full(len(ids), num_classes)
        mapping[rows] = cols
        confusion += confusion_matrix(mapping[local], label, num_classes + 1)
    return _matched_summary(confusion, num_classes)
