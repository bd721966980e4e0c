"""The library's statistics against hand-computed values: one IoU, paired intervals, the evaluate and score
summaries."""

import numpy as np
import pytest

from seg4diff.evaluation.comparison import PROTOCOLS, paired_comparison, variant_metrics
from seg4diff.evaluation.metrics import class_iou, confusion_matrix, miou_of, summarize, summarize_statistics
from seg4diff.evaluation.scoring import ScoreTables, headline_scores
from seg4diff.evaluation.statistics import (
    bootstrap_p_value,
    holm_adjust,
    miou_interval,
    paired_family,
    paired_mean_difference,
    paired_miou_difference,
    resample_weights,
)

# two images, three classes; per image [true positives, label area, prediction area] by class
IMAGE_A = np.array([[3, 1, 0], [4, 2, 0], [3, 3, 1]])  # class 2 predicted once, never labelled
IMAGE_B = np.array([[1, 0, 2], [2, 0, 2], [1, 1, 3]])  # class 1 predicted once, never labelled


def test_the_one_iou_is_tp_over_the_union_and_nan_where_the_union_is_empty():
    iou = class_iou(IMAGE_A)
    np.testing.assert_allclose(iou[:2], [3 / (4 + 3 - 3), 1 / (2 + 3 - 1)])
    assert iou[2] == 0.0  # predicted, never right: IoU 0, counted
    assert np.isnan(class_iou(np.array([[1, 0], [1, 0], [1, 0]]))[1])  # neither labelled nor predicted: excluded
    assert miou_of(IMAGE_A) == pytest.approx((0.75 + 0.25 + 0.0) / 3)
    summed = IMAGE_A + IMAGE_B  # statistics add up over images: tp [4, 1, 2], label [6, 2, 2], prediction [4, 4, 4]
    np.testing.assert_allclose(class_iou(summed), [4 / 6, 1 / 5, 2 / 4])


def test_summaries_of_statistics_and_of_the_confusion_matrix_agree_with_the_hand_computed_numbers():
    target = np.array([[0, 0, 1], [1, 2, 255]])
    prediction = np.array([[0, 1, 1], [0, 2, 2]])
    confusion = confusion_matrix(prediction, target, 3)  # the 255 pixel is ignored
    np.testing.assert_array_equal(confusion, [[1, 1, 0], [1, 1, 0], [0, 0, 1]])
    by_confusion = summarize(confusion)
    by_statistics = summarize_statistics(np.stack([np.diag(confusion), confusion.sum(1), confusion.sum(0)])[None])
    for result in (by_confusion, by_statistics):
        np.testing.assert_allclose(result["iou"], [1 / 3, 1 / 3, 1.0])
        np.testing.assert_allclose(result["acc"], [0.5, 0.5, 1.0])
        assert result["miou"] == pytest.approx(5 / 9) and result["pacc"] == pytest.approx(3 / 5)


def test_paired_intervals_hold_the_point_difference_and_are_exact_for_one_unit():
    a, b = np.stack([IMAGE_A]), np.stack([IMAGE_A * 2])  # one image: every resample is that image
    d = paired_miou_difference(a, b, resamples=50, seed=0)
    assert d["delta"] == pytest.approx(miou_of(IMAGE_A * 2) - miou_of(IMAGE_A)) == pytest.approx(d["ci_low"])
    assert d["ci_high"] == pytest.approx(d["delta"]) and d["n"] == 1
    assert miou_interval(a, 50, 0) == pytest.approx((miou_of(IMAGE_A),) * 2)
    means = paired_mean_difference(np.array([1.0, 2.0, np.nan]), np.array([1.5, 3.0, 4.0]), resamples=2000, seed=1)
    assert means["n"] == 2 and means["delta"] == pytest.approx(0.75)  # the NaN unit is left out
    assert 0.5 <= means["ci_low"] <= 0.75 <= means["ci_high"] <= 1.0  # resampled means of {0.5, 1.0}
    assert paired_mean_difference([1.0, 2.0], [1.5, 3.0], 200, 7) == paired_mean_difference(
        [1.0, 2.0], [1.5, 3.0], 200, 7
    )


def _result(stats: np.ndarray, flow: list[float]) -> dict:
    segmentation = {p: summarize_statistics(stats) | {"stats": stats} for p in PROTOCOLS}
    segmentation["gt_classes"] |= {"predictor": "probability"}
    return {
        "segmentation": segmentation,
        "fidelity": {"heldout_flow_loss": float(np.mean(flow))},
        "per_sample_flow_loss": np.array(flow),
    }


def test_evaluate_numbers_per_model_and_paired_between_models():
    base = _result(np.stack([IMAGE_A, IMAGE_B]), [1.0, 2.0])
    tuned = _result(np.stack([IMAGE_A * 2, IMAGE_B]), [1.1, 2.4])
    metrics = variant_metrics(base, resamples=200, seed=0)
    assert set(metrics) == set(PROTOCOLS) | {"fidelity"} and metrics["gt_classes"]["predictor"] == "probability"
    summed = IMAGE_A + IMAGE_B
    assert metrics["vocabulary"]["miou"] == pytest.approx(np.mean([4 / 6, 1 / 5, 2 / 4]))
    assert metrics["vocabulary"]["pacc"] == pytest.approx(summed[0].sum() / summed[1].sum())
    low, high = metrics["vocabulary"]["miou_ci"]
    assert low <= metrics["vocabulary"]["miou"] <= high
    comparison = paired_comparison(base, tuned, resamples=200, seed=0)
    expected = miou_of(IMAGE_A * 2 + IMAGE_B) - miou_of(IMAGE_A + IMAGE_B)
    assert comparison["gt_classes"]["delta_miou"] == pytest.approx(expected)
    assert comparison["heldout_flow_loss_relative"]["delta"] == pytest.approx((0.1 + 0.2) / 2)  # relative, per image
    low, high = comparison["heldout_flow_loss_relative"]["ci"]
    assert 0.1 - 1e-12 <= low <= 0.15 <= high <= 0.2 + 1e-12


def test_headline_scores_name_the_best_layer_and_sigma():
    # one sample, one direction, two layers × two sigmas; layer 1 at σ 0.5 is perfect, everything else half right
    half, perfect = np.array([[1, 1], [2, 2], [2, 2]]), np.array([[2, 2], [2, 2], [2, 2]])
    per_sample = np.array([[[[half, half], [half, perfect]]]])  # (sample, direction, layer, sigma, 3, C)
    tables = ScoreTables(
        per_sample,
        np.zeros((1, 2, 1, 2, 3, 2), np.int64),
        np.stack([[half, half]]),
        {},
        ("image_to_text",),
        [0, 1],
        [-1],
        [0.1, 0.5],
    )
    headline = headline_scores(tables)
    assert headline["image_to_text.best_layer"] == 1 and headline["image_to_text.best_sigma"] == 0.5
    assert not any("miou" in key for key in headline)  # chosen on these images: never reported as a result


def test_holm_adjusted_p_values_and_bonferroni_intervals_agree_with_the_hand_computed_numbers():
    # Holm by hand: sorted 0.01, 0.03, 0.04, 0.2 (m = 4) → 4·0.01, 3·0.03, max(2·0.04, 0.09), max(1·0.2, 0.09)
    np.testing.assert_allclose(holm_adjust([0.01, 0.04, 0.03, np.nan, 0.2]), [0.04, 0.09, 0.09, np.nan, 0.2])
    assert holm_adjust([0.6, 0.5]).tolist() == [1.0, 1.0]  # capped at 1
    # two-sided bootstrap p: draws −1, 1, 2, 3 → (1 + 1)/5 at or below 0, (1 + 3)/5 at or above: p = 2·0.4
    assert bootstrap_p_value(np.array([-1.0, 1.0, 2.0, 3.0])) == pytest.approx(0.8)
    assert bootstrap_p_value(np.full(99, 0.5)) == pytest.approx(2 / 100) and bootstrap_p_value(np.zeros(9)) == 1.0

    rng = np.random.default_rng(0)
    a = rng.random(30)
    shifted, noise = a + 0.3 + rng.normal(0, 0.05, 30), a + rng.normal(0, 0.3, 30)
    with_nan = noise.copy()
    with_nan[:4] = np.nan  # units undefined for one condition are left out of that test
    pairs = [(a, shifted), (a, noise), (a, with_nan)]
    family = paired_family(pairs, resamples=2000, seed=5)
    for (x, y), result in zip(pairs, family):
        alone = paired_mean_difference(x, y, resamples=2000, seed=5)  # the same draws: the same 95% interval
        assert {key: result[key] for key in alone} == pytest.approx(alone)
        keep = np.isfinite(x) & np.isfinite(y)
        draws = resample_weights(keep.sum(), 2000, 5) @ (y - x)[keep] / keep.sum()
        assert result["p_value"] == pytest.approx(bootstrap_p_value(draws))
        low, high = np.quantile(draws, [0.05 / 3 / 2, 1 - 0.05 / 3 / 2])  # Bonferroni over m = 3 tests
        assert (result["ci_low_bonferroni"], result["ci_high_bonferroni"]) == pytest.approx((low, high))
        assert result["ci_low_bonferroni"] <= result["ci_low"] <= result["ci_high"] <= result["ci_high_bonferroni"]
    np.testing.assert_allclose([r["p_holm"] for r in family], holm_adjust([r["p_value"] for r in family]))
    assert family[0]["p_holm"] == pytest.approx(3 * 2 / 2001)  # every draw above 0: the smallest p, times m
    assert family[2]["n"] == 26
    empty = paired_family([(a, shifted), (np.full(3, np.nan), np.ones(3))], resamples=200, seed=0)
    assert empty[1]["n"] == 0 and np.isnan(empty[1]["p_value"]) and np.isnan(empty[1]["p_holm"])
    assert empty[0]["p_holm"] == pytest.approx(empty[0]["p_value"])  # a family of one test: nothing to correct
