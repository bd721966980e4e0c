"""Readouts on a crafted split whose one (block, head, σ) holds the ground-truth area maps and the rest noise: each
readout's choice and maps, the learned readout recovering that plane, and the harness's paired table."""

import numpy as np
import pytest

from seg4diff.evaluation.metrics import miou_of
from seg4diff.evaluation.readouts import (
    BestHead,
    Daam,
    Learned,
    Paper,
    Split,
    TopK,
    readout_table,
    score_readout,
    statistics,
    store_readouts,
    token_shares,
)

LAYERS, HEADS, SIGMAS, GRID, SIDE = 3, 2, 2, (4, 4), 16
GOOD = (1, 0, 1)  # the (layer, head, σ) that holds the area maps


def _split(seed: int, images: int = 24) -> Split:
    rng = np.random.default_rng(seed)
    attention, classes, labels = [], [], []
    for _ in range(images):
        label = np.zeros((SIDE, SIDE), np.int64)
        for c in (1, 2):  # two square objects on background, on the token grid, at random places
            y, x = 4 * rng.integers(0, 3, size=2)
            label[y : y + 8, x : x + 8] = c
        present = np.array([c for c in (1, 2) if (label == c).any()])
        maps = rng.random((LAYERS, HEADS, SIGMAS, len(present), *GRID)).astype(np.float32)
        maps[GOOD] = token_shares(label, present, GRID)
        attention.append(maps)
        classes.append(present)
        labels.append(label)
    return Split(attention, classes, labels, num_classes=3)


def _miou(split, readout, threshold=0.2):
    return float(miou_of(statistics(split, [readout.maps(a) for a in split.attention], threshold).sum(0)))


def test_each_readout_makes_its_choice_on_val_and_reads_what_it_says():
    val = _split(0)
    a = val.attention[0]
    paper = Paper("paper", layer=1, sigma=1)
    np.testing.assert_allclose(paper.maps(a), a[1, :, 1].mean(0))
    head = BestHead("best-head")
    head.fit(val)
    assert head.index == GOOD and head.choice == {"layer_index": 1, "head": 0, "sigma_index": 1}
    np.testing.assert_array_equal(head.maps(a), a[GOOD])
    top = TopK("top-1", k=1, sigma=1)
    top.fit(val)
    assert top.layers == [1]
    np.testing.assert_allclose(top.maps(a), a[[1], :, 1].mean(axis=(0, 1)))
    np.testing.assert_allclose(Daam("daam").maps(a), a.mean(axis=(0, 1, 2)), rtol=1e-6)
    assert _miou(val, head) > 0.75 > 0.3 > _miou(val, Daam("daam"))  # the clean plane segments, the noise average not


def test_the_learned_readout_finds_the_informative_plane_and_beats_the_head_mean():
    val, report = _split(0), _split(1)
    learned = Learned("learned", ridge=1e-3)
    learned.fit(val)
    weights = learned.weights.reshape(LAYERS, HEADS, SIGMAS)
    assert np.argmax(np.abs(weights)) == np.ravel_multi_index(GOOD, weights.shape)
    assert abs(weights[GOOD]) > 10 * np.abs(np.delete(weights.ravel(), np.ravel_multi_index(GOOD, weights.shape))).max()
    assert _miou(report, learned) > _miou(report, Paper("paper", layer=1, sigma=1)) + 0.05


def test_the_table_pairs_every_readout_with_paper_on_the_same_images():
    val, report = _split(0), _split(1)
    thresholds = [0.1, 0.2, 0.3]
    scored = [score_readout(r, val, report, thresholds) for r in store_readouts(1, 1, k=1)]
    rows = readout_table(scored, resamples=500, seed=0)
    assert [row["readout"] for row in rows] == ["paper", "blocks-mean", "top-1", "best-head", "daam", "learned"]
    assert rows[0]["minus_paper"] == 0 and rows[0]["minus_paper_low"] == rows[0]["minus_paper_high"] == 0
    for row, result in zip(rows, scored):
        assert row["images"] == 24 and row["background_threshold"] in thresholds
        assert row["miou"] == pytest.approx(float(miou_of(result.report.sum(0))))
        assert row["minus_paper"] == pytest.approx(row["miou"] - rows[0]["miou"])
        assert row["ci_low"] <= row["miou"] <= row["ci_high"]
    best_head = rows[3]
    assert best_head["minus_paper_low"] > 0  # the clean head beats the head mean that dilutes it, paired
