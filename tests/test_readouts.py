"""Readouts on a crafted split whose one (block, head, σ) holds the ground-truth area maps and the rest noise: each
readout's choice and maps, the learned readout recovering that plane, and the harness's paired table."""

import numpy as np
import pytest

from seg4diff.evaluation.metrics import miou_of
from seg4diff.evaluation.readouts import (
    BestHead,
    ConceptAttention,
    Daam,
    Learned,
    Paper,
    Probe,
    Split,
    TopK,
    concept_probabilities,
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
    maps = [readout.maps(a, c) for a, c in zip(split.attention, split.classes)]
    return float(miou_of(statistics(split, maps, threshold).sum(0)))


def test_each_readout_makes_its_choice_on_val_and_reads_what_it_says():
    val = _split(0)
    a = val.attention[0]
    paper = Paper("paper", layer=1, sigma=1)
    np.testing.assert_allclose(paper.maps(a, None), a[1, :, 1].mean(0))
    head = BestHead("best-head")
    head.fit(val)
    assert head.index == GOOD and head.choice == {"layer_index": 1, "head": 0, "sigma_index": 1}
    np.testing.assert_array_equal(head.maps(a, None), a[GOOD])
    top = TopK("top-1", k=1, sigma=1)
    top.fit(val)
    assert top.layers == [1]
    np.testing.assert_allclose(top.maps(a, None), a[[1], :, 1].mean(axis=(0, 1)))
    np.testing.assert_allclose(Daam("daam").maps(a, None), a.mean(axis=(0, 1, 2)), rtol=1e-6)
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


def _concept_split(seed: int) -> Split:
    """ConceptAttention inputs (layer, 1, σ, concept, y, x) of the crafted split: layer 2 at σ 0 scores each class's
    concept by its area share (and the background concept, last, by the rest); everything else noise."""
    base, rng = _split(seed), np.random.default_rng(seed + 100)
    inputs = []
    for label, classes in zip(base.labels, base.classes):
        shares = token_shares(label, np.append(classes, 0), GRID)
        scores = rng.normal(size=(4, 1, SIGMAS, len(classes) + 1, *GRID)).astype(np.float32)
        scores[2, 0, 0] = 8 * shares
        inputs.append(scores)
    return Split(inputs, base.classes, base.labels, base.num_classes)


def test_concept_attention_softmaxes_over_concepts_and_chooses_its_layers_on_val():
    val, report = _concept_split(0), _concept_split(1)
    scores = val.attention[0]
    probabilities = concept_probabilities(scores, val.classes[0])
    assert probabilities.shape == (4, 1, SIGMAS, len(val.classes[0]), *GRID)  # background concept dropped
    full = np.exp(scores) / np.exp(scores).sum(axis=-3, keepdims=True)
    np.testing.assert_allclose(probabilities, full[..., : len(val.classes[0]), :, :], rtol=1e-5)
    readout = ConceptAttention("concept-attention", k=1)
    readout.fit(val)
    assert readout.layers == [2] and readout.sigma == 0
    np.testing.assert_allclose(readout.maps(scores, val.classes[0]), probabilities[2, 0, 0], rtol=1e-6)
    assert _miou(report, readout) > 0.75


def test_the_probe_learns_classes_from_features_that_carry_them():
    """Features: a one-hot of each token's majority class (with noise features): the probe reads it back."""

    def features(split, seed):
        rng = np.random.default_rng(seed)
        out = []
        for label in split.labels:
            shares = token_shares(label, np.arange(split.num_classes), GRID)
            out.append(np.concatenate([shares, rng.normal(size=(5, *GRID))]).astype(np.float32))
        return Split(out, split.classes, split.labels, split.num_classes)

    val, report = features(_split(0), 0), features(_split(1), 1)
    probe = Probe("probe", layer=1, sigma=1, ridge=1e-4)
    probe.fit(val)
    maps = probe.maps(report.attention[0], report.classes[0])
    truth = token_shares(report.labels[0], report.classes[0], GRID)
    np.testing.assert_allclose(maps, truth, atol=0.05)
    assert probe.choice == {"layer_index": 1, "sigma_index": 1, "features": 8}
    truth = [token_shares(label, c, GRID) for label, c in zip(report.labels, report.classes)]
    truth_miou = float(miou_of(statistics(report, truth, 0.2).sum(0)))  # the area maps themselves (a coarse grid)
    assert _miou(report, probe) == pytest.approx(truth_miou, abs=0.02) and truth_miou > 0.75
