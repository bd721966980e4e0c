import itertools

import numpy as np
import pytest

from seg4diff.unsupervised import match_dataset, match_per_image, merge_token_maps


def _brute_force_dataset(clusters, labels, num_clusters, num_classes):
    """Tries every injective cluster → class assignment; returns the best total of correctly matched pixels."""
    best = -1
    for assignment in itertools.permutations(range(num_classes), min(num_clusters, num_classes)):
        mapping = dict(zip(range(num_clusters), assignment))
        hits = sum(int(np.sum([(mapping.get(c, -1) == l) for c, l in zip(cl.ravel(), lb.ravel())])) for cl, lb in zip(clusters, labels))
        best = max(best, hits)
    return best


def test_dataset_matching_against_brute_force():
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, 3, (6, 6)) for _ in range(3)]
    clusters = [np.where(rng.random((6, 6)) < 0.7, (l + 1) % 3, rng.integers(0, 3, (6, 6))) for l in labels]
    result = match_dataset(clusters, labels, 3, 3)
    best_hits = _brute_force_dataset(clusters, labels, 3, 3)
    assert result["pacc"] == pytest.approx(best_hits / 108)
    assert result["pacc"] > 0.6  # the permutation (cluster k ↔ class k−1) was found


def test_per_image_matching_beats_or_equals_dataset_matching_and_handles_unmatched():
    label = np.array([[0, 0, 1, 1]] * 2)
    swapped = [np.array([[1, 1, 0, 0]] * 2), np.array([[0, 0, 1, 1]] * 2)]  # the two images disagree on ids
    per_image = match_per_image(swapped, [label, label], 2)
    dataset = match_dataset(swapped, [label, label], 2, 2)
    assert per_image["miou"] == 1.0 and dataset["miou"] < 1.0
    extra = match_per_image([np.array([[0, 5, 1, 1]] * 2)], [label], 2)  # cluster 5 has no class left: counted as missed
    assert extra["pacc"] == pytest.approx(6 / 8) and extra["iou"][0] == pytest.approx(0.5)


def test_merging_joins_similar_maps_and_separates_different_ones():
    yy, xx = np.mgrid[0:8, 0:8]
    left, right = (xx < 4).astype(float), (xx >= 4).astype(float)
    maps = np.stack([left * 5, left * 5 + 0.01, right * 5, right * 5 - 0.01])
    clusters = merge_token_maps(maps, kl_threshold=0.1, size=8)
    assert set(np.unique(clusters)) == {0, 2}
    assert (clusters[:, :3] == 0).all() and (clusters[:, 5:] == 2).all()
    assert len(np.unique(merge_token_maps(maps, kl_threshold=1e-12, size=8))) >= 2
