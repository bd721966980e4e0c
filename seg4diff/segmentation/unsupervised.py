"""Unsupervised segmentation from empty-prompt attention, as the authors do it, and DiffSeg's per-image matching.

Maps: per-pixel min–max over the tokens, then a spatial softmax per token map. Grouping (the authors' anchor rule):
take the first ungrouped map as an anchor, put every ungrouped map whose symmetric KL to the ANCHOR is below the
threshold in its group, repeat; each group's map is the mean of its softmax-normalised maps; argmax over groups.
Cluster ids mean nothing across images, so the only valid protocol without a shared codebook is per-image Hungarian
matching of clusters to the image's own classes (DiffSeg, DiffCut), summed into one dataset confusion matrix. "Own"
means the classes present in the image's ground truth (background among them where the dataset labels it): a cluster
left over once each present class has one is unmatched, and its pixels count as misses of the classes truly there
(false negatives), never as false positives of a class the image does not hold.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from seg4diff.data.sample import IGNORE_INDEX
from seg4diff.evaluation.metrics import confusion_matrix, confusion_statistics, summarize
from seg4diff.segmentation.masks import upsample


def softmax_maps(maps: np.ndarray) -> np.ndarray:
    """Returns (token, y·x) distributions: per-pixel min–max over tokens, then a softmax over each token's pixels."""
    maps = maps.astype(np.float64)
    low, high = maps.min(axis=0, keepdims=True), maps.max(axis=0, keepdims=True)
    flat = ((maps - low) / (high - low + 1e-8)).reshape(len(maps), -1)
    distributions = np.exp(flat - flat.max(axis=1, keepdims=True))
    return distributions / distributions.sum(axis=1, keepdims=True)


def symmetric_kl(p: np.ndarray, q: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Returns ½(KL(p‖q) + KL(q‖p)) of one distribution p (n,) against each row of q (m, n)."""
    p = p[None]
    return 0.5 * (np.sum(p * np.log((p + eps) / (q + eps)), -1) + np.sum(q * np.log((q + eps) / (p + eps)), -1))


def anchor_groups(distributions: np.ndarray, kl_threshold: float) -> list[list[int]]:
    """Returns the groups of the authors' anchor rule: every ungrouped map within the threshold of the anchor joins
    it."""
    ungrouped, groups = list(range(len(distributions))), []
    while ungrouped:
        distances = symmetric_kl(distributions[ungrouped[0]], distributions[ungrouped])
        members = [token for token, d in zip(ungrouped, distances) if d < kl_threshold or token == ungrouped[0]]
        groups.append(members)
        ungrouped = [token for token in ungrouped if token not in members]
    return groups


def merge_token_maps(maps: np.ndarray, kl_threshold: float, size: int | tuple[int, int]) -> np.ndarray:
    """Returns a cluster map of `size` (height, width) for one image's (token, y, x) attention; values are group
    indices."""
    distributions = softmax_maps(maps)
    groups = anchor_groups(distributions, kl_threshold)
    group_maps = np.stack([distributions[g].mean(axis=0) for g in groups]).reshape(len(groups), *maps.shape[-2:])
    return upsample(group_maps.astype(np.float32), size).argmax(axis=0)


def _matched_summary(confusion: np.ndarray, num_classes: int) -> dict:
    """Summary over the real classes of a (C+1)×(C+1) matrix whose last column counts unmatched-cluster pixels."""
    result = summarize(confusion)
    iou, acc = result["iou"][:num_classes], result["acc"][:num_classes]
    return {"miou": float(np.nanmean(iou)), "macc": float(np.nanmean(acc)), "pacc": result["pacc"], "iou": iou}


def image_confusion(cluster: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """Returns the (C+1)×(C+1) confusion of one image after Hungarian-matching its clusters to the classes present in
    its label; the last column counts pixels of clusters left unmatched (more clusters than present classes)."""
    ids = np.unique(cluster)
    local = np.searchsorted(ids, cluster)
    valid = label != IGNORE_INDEX
    present = np.unique(label[valid])  # matching an absent class would make a false positive out of nothing
    overlap = np.bincount(local[valid] * num_classes + label[valid], minlength=len(ids) * num_classes).reshape(
        len(ids), num_classes
    )[:, present]
    rows, cols = linear_sum_assignment(-overlap)
    mapping = np.full(len(ids), num_classes)
    mapping[rows] = present[cols]
    return confusion_matrix(mapping[local], label, num_classes + 1)


def match_per_image(clusters: list[np.ndarray], labels: list[np.ndarray], num_classes: int) -> dict:
    """DiffSeg's protocol: each image's clusters matched to the classes present in it, then one dataset-level confusion
    matrix (unmatched clusters' pixels are misses of their true classes).
    Also returns `stats`, (image, 3, C) per-image class statistics for paired intervals, and the clusters per image."""
    confusions = [image_confusion(c, l, num_classes) for c, l in zip(clusters, labels)]
    result = _matched_summary(sum(confusions), num_classes)
    result["stats"] = np.stack([confusion_statistics(c)[:, :num_classes] for c in confusions])  # real classes
    result["clusters_per_image"] = float(np.mean([len(np.unique(c)) for c in clusters]))
    return result
