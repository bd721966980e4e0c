import numpy as np
import pandas as pd
import pytest

from seg4diff.evaluation.metrics import class_statistics, confusion_matrix, miou_of, summarize
from seg4diff.evaluation.scoring import bootstrap_miou
from seg4diff.evaluation.selection import select_expert
from seg4diff.segmentation.masks import class_maps, predict, upsample


def test_class_maps_average_each_class_tokens_and_skip_others():
    maps = np.stack([np.full((2, 2), v, np.float32) for v in (1, 3, 10, 7)])  # 4 tokens
    token_class = np.array([2, 2, -1, 5])
    out = class_maps(maps, token_class, np.array([2, 5, 9]))
    assert out[0, 0, 0] == 2 and out[1, 0, 0] == 7 and np.isneginf(out[2]).all()


def test_prediction_is_argmax_of_bilinear_upsampled_maps():
    left = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    maps = np.stack([left, 1 - left])
    pred = predict(maps, np.array([3, 7]), 4)
    np.testing.assert_array_equal(pred, [[3, 3, 7, 7]] * 4)
    up = upsample(maps, 4)
    assert up.shape == (2, 4, 4) and up[0, 0, 0] == 1.0 and up[0, 0, 1] == pytest.approx(0.75)
    thresholded = predict(maps * 0.4, np.array([3, 7]), 4, background_threshold=0.875)  # below 0.875 × peak
    assert (thresholded[:, 1:3] == 0).all() and (thresholded[:, 0] == 3).all() and (thresholded[:, 3] == 7).all()


def test_full_resolution_beats_latent_resolution_on_a_thin_structure():
    """A diagonal boundary: argmax at label resolution recovers it better than a blocky latent-grid prediction."""
    size, grid = 32, 4
    yy, xx = np.mgrid[0:size, 0:size]
    target = (xx > yy).astype(np.int64)
    cy, cx = (np.arange(grid) + 0.5) * size / grid, (np.arange(grid) + 0.5) * size / grid
    score = (cx[None, :] - cy[:, None]).astype(np.float32)  # signed distance to the diagonal, at grid centres
    maps = np.stack([-score, score])
    full = predict(maps, np.array([0, 1]), size)
    latent = np.kron(predict(maps, np.array([0, 1]), grid), np.ones((size // grid, size // grid), int))
    full_miou = summarize(confusion_matrix(full, target, 2))["miou"]
    latent_miou = summarize(confusion_matrix(latent, target, 2))["miou"]
    assert full_miou > latent_miou + 0.05


def test_class_statistics_equal_the_confusion_matrix_and_add_up():
    """Per class [TP, label area, prediction area] read off a hand-checked confusion matrix, for many predictions at
    once."""
    rng = np.random.default_rng(2)
    target = rng.integers(0, 4, (6, 5))
    target[0, :2] = 255
    predictions = rng.integers(0, 4, (3, 2, 6, 5))
    stats = class_statistics(predictions, target, 4)
    assert stats.shape == (3, 2, 3, 4)
    for index in np.ndindex(3, 2):
        confusion = confusion_matrix(predictions[index], target, 4)
        np.testing.assert_array_equal(stats[index], [np.diag(confusion), confusion.sum(1), confusion.sum(0)])
        assert miou_of(stats[index]) == pytest.approx(summarize(confusion)["miou"])


def test_vectorised_miou_and_bootstrap_interval():
    rng = np.random.default_rng(1)
    pairs = [(rng.integers(0, 3, 50), rng.integers(0, 3, 50)) for _ in range(30)]
    per_sample = np.stack([class_statistics(p, t, 3) for p, t in pairs])
    dataset = sum(confusion_matrix(p, t, 3) for p, t in pairs)
    assert miou_of(per_sample.sum(0)) == pytest.approx(summarize(dataset)["miou"])
    low, high = bootstrap_miou(per_sample, resamples=200, seed=0)
    assert low < miou_of(per_sample.sum(0)) < high
    again = bootstrap_miou(per_sample, resamples=200, seed=0)
    assert (again[0], again[1]) == (low, high)  # seeded


def _scores():
    rows = []
    for layer, (a, b) in enumerate([(0.3, 0.4), (0.6, 0.7), (0.55, 0.5), (0.2, 0.1)]):
        for sigma, value in ((0.5, a), (0.7, b)):
            rows.append((layer, sigma, "mean", "image_to_text", "miou", value, value - 0.05, value + 0.05))
    rows.append((1, 0.5, "0", "image_to_text", "miou", 0.99, np.nan, np.nan))  # a single head never wins
    return pd.DataFrame(rows, columns=["layer", "sigma", "head", "direction", "metric", "value", "ci_low", "ci_high"])


def test_selection_rule_runner_up_and_forcing():
    expert = select_expert(_scores(), "best_miou", "image_to_text")
    assert (expert["layer"], expert["sigma"], expert["miou"]) == (1, 0.7, 0.7)
    assert expert["runner_up"]["layer"] == 2 and expert["runner_up"]["miou"] == 0.55
    assert expert["intervals_overlap"] is False and expert["forced"] is False
    forced = select_expert(_scores(), "best_miou", "image_to_text", force_layer=3, force_sigma=0.5)
    assert (forced["layer"], forced["sigma"], forced["forced"]) == (3, 0.5, True)
    with pytest.raises(ValueError, match="force_layer 9 is not a scored layer"):
        select_expert(_scores(), "best_miou", "image_to_text", force_layer=9)


def test_scoring_memory_does_not_grow_with_the_samples():
    """At ADE-150 × SD3-medium's layers and heads, traced peak memory of the streaming pass grows only by the O(classes)
    statistics kept per sample (3 × 150 int32 per layer), never by the store or a confusion matrix per sample."""
    import sys
    import tracemalloc
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from scale import synthetic

    from seg4diff.evaluation.scoring import score_store

    peaks = {}
    for samples in (4, 16):
        store, labels = synthetic(samples, 150, 24, 24)
        tracemalloc.start()
        tables = score_store(store, labels, 150, progress=False)
        peaks[samples] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert tables.per_sample.shape == (samples, 1, 24, 1, 3, 150) and tables.per_head.shape == (
            1,
            24,
            24,
            1,
            3,
            150,
        )
    per_sample_stats = 24 * 3 * 150 * 4
    assert peaks[16] - peaks[4] < 12 * per_sample_stats + 2 * 2**20, (
        peaks
    )  # 12 more samples: their statistics, and noise
