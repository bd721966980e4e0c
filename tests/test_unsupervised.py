import numpy as np
import pytest

from seg4diff.segmentation.unsupervised import (
    anchor_groups,
    image_confusion,
    match_per_image,
    merge_token_maps,
    softmax_maps,
    symmetric_kl,
)


def test_per_image_matching_ignores_cluster_ids_across_images_and_handles_unmatched():
    label = np.array([[0, 0, 1, 1]] * 2)
    swapped = [np.array([[1, 1, 0, 0]] * 2), np.array([[0, 0, 1, 1]] * 2)]  # the two images disagree on ids
    per_image = match_per_image(swapped, [label, label], 2)
    assert per_image["miou"] == 1.0 and per_image["clusters_per_image"] == 2
    np.testing.assert_array_equal(per_image["stats"][0], [[4, 4], [4, 4], [4, 4]])
    extra = match_per_image(
        [np.array([[0, 5, 1, 1]] * 2)], [label], 2
    )  # cluster 5 has no class left: counted as missed
    assert extra["pacc"] == pytest.approx(6 / 8) and extra["iou"][0] == pytest.approx(0.5)


def test_merging_joins_similar_maps_and_separates_different_ones():
    yy, xx = np.mgrid[0:8, 0:8]
    left, right = (xx < 4).astype(float), (xx >= 4).astype(float)
    maps = np.stack([left * 5, left * 5 + 0.01, right * 5, right * 5 - 0.01])
    clusters = merge_token_maps(maps, kl_threshold=0.1, size=8)
    assert set(np.unique(clusters)) == {0, 1}  # two groups: tokens 0+1 and 2+3
    assert (clusters[:, :3] == 0).all() and (clusters[:, 5:] == 1).all()
    assert len(np.unique(merge_token_maps(maps, kl_threshold=1e-12, size=8))) >= 2


def test_anchor_grouping_compares_with_the_anchor_not_with_the_growing_group():
    """A chain a ~ b ~ c with a and c far apart: the anchor rule groups a with b only; c starts its own group."""
    base = np.linspace(0, 1, 16)
    distributions = np.stack([np.exp(k * base) for k in (0.0, 1.6, 3.2)])
    distributions /= distributions.sum(1, keepdims=True)
    d_ab, d_ac = symmetric_kl(distributions[0], distributions[1:])
    threshold = (d_ab + d_ac) / 2  # b within reach of a, c not
    assert d_ab < threshold < d_ac
    assert anchor_groups(distributions, threshold) == [[0, 1], [2]]
    assert anchor_groups(distributions, 10.0) == [[0, 1, 2]]
    np.testing.assert_allclose(softmax_maps(np.random.default_rng(0).random((3, 4, 4))).sum(1), 1.0)


def test_surplus_clusters_stay_unmatched_and_give_absent_classes_no_false_positives():
    """Classes 0 and 1 in the image, class 2 absent, three clusters: matched over every class, the 1-pixel cluster
    would become class 2 (a false positive of an absent class); matched over the present classes it stays unmatched
    and its pixel is a miss of class 1, its true class."""
    label = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    cluster = np.array([[7, 7, 3, 3], [7, 7, 3, 9]])  # 7 → class 0 (4 px), 3 → class 1 (3 px), 9: 1 px of class 1
    expected = np.array(  # rows: truth 0, 1, 2, (unmatched); columns: prediction 0, 1, 2, unmatched
        [
            [4, 0, 0, 0],
            [0, 3, 0, 1],
            [0, 0, 0, 0],
            [0, 0, 0, 0],
        ]
    )
    np.testing.assert_array_equal(image_confusion(cluster, label, 3), expected)
    result = match_per_image([cluster], [label], 3)
    assert result["stats"][0, 2, 2] == 0  # no pixel predicted as the absent class
    np.testing.assert_allclose(result["iou"], [1.0, 3 / 4, np.nan])  # class 2: absent and never predicted
    assert result["miou"] == pytest.approx((1.0 + 3 / 4) / 2) and result["pacc"] == pytest.approx(7 / 8)
    with_two = match_per_image([cluster, np.array([[0, 0, 1, 1]] * 2)], [label, np.array([[0, 0, 2, 2]] * 2)], 3)
    assert with_two["iou"][2] == 1.0  # where class 2 is present its cluster is matched; the first image adds nothing


def test_ignored_pixels_and_images_without_labels_match_nothing():
    label = np.array([[255, 255, 1, 1]])
    confusion = image_confusion(np.array([[0, 0, 1, 1]]), label, 2)  # cluster 0 lies on ignored pixels only
    np.testing.assert_array_equal(confusion, [[0, 0, 0], [0, 2, 0], [0, 0, 0]])
    assert image_confusion(np.array([[0, 1]]), np.array([[255, 255]]), 2).sum() == 0
