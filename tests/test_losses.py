import itertools
import math

import numpy as np
import pytest
import torch

from seg4diff.segmentation.masks import predict
from seg4diff.training.losses import dice_loss, hungarian_match, pairwise_costs, predictor_loss, sigmoid_focal_loss


def test_focal_loss_against_hand_computation():
    logits = torch.tensor([[2.0, -1.0]])
    targets = torch.tensor([[1.0, 0.0]])
    p1, p2 = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(1))
    expected = (0.25 * (1 - p1) ** 2 * -math.log(p1) + 0.75 * p2**2 * -math.log(1 - p2)) / 2
    assert sigmoid_focal_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    assert sigmoid_focal_loss(torch.tensor([[20.0]]), torch.tensor([[1.0]])).item() < 1e-9  # confident and right


def test_dice_loss_against_hand_computation():
    logits = torch.tensor([[[0.0, 100.0], [-100.0, 100.0]]])
    masks = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    p = torch.sigmoid(logits).flatten()
    expected = 1 - (2 * (p * masks.flatten()).sum() + 1) / (p.sum() + 2 + 1)
    assert dice_loss(logits, masks).item() == pytest.approx(expected.item())
    assert expected.item() == pytest.approx(1 - (2 * 1.5 + 1) / (2.5 + 2 + 1), abs=1e-6)


def test_pairwise_costs_equal_the_losses():
    g = torch.Generator().manual_seed(0)
    logits, masks = torch.randn(3, 4, 4, generator=g), (torch.rand(2, 4, 4, generator=g) > 0.5).float()
    focal, dice = pairwise_costs(logits, masks)
    for i, j in itertools.product(range(3), range(2)):
        assert focal[i, j].item() == pytest.approx(
            sigmoid_focal_loss(logits[i : i + 1], masks[j : j + 1]).item(), rel=1e-5
        )
        assert dice[i, j].item() == pytest.approx(dice_loss(logits[i : i + 1], masks[j : j + 1]).item(), rel=1e-5)


def test_matcher_against_brute_force():
    g = torch.Generator().manual_seed(3)
    logits, masks = 3 * torch.randn(5, 6, 6, generator=g), (torch.rand(3, 6, 6, generator=g) > 0.6).float()
    rows, cols = hungarian_match(logits, masks)
    focal, dice = pairwise_costs(logits, masks)
    cost = (0.02 * focal + dice).numpy()
    best = min(itertools.permutations(range(5), 3), key=lambda chosen: sum(cost[c, j] for j, c in enumerate(chosen)))
    assert sorted(zip(cols, rows)) == [(j, c) for j, c in enumerate(best)]
    assert cost[rows, cols].sum() == pytest.approx(sum(cost[c, j] for j, c in enumerate(best)))


def test_predictor_loss_is_the_cross_entropy_of_the_predictors_own_decision():
    rng = np.random.default_rng(0)
    probabilities = torch.from_numpy(rng.uniform(0.001, 0.3, (2, 6, 5)).astype(np.float32))
    classes = np.array([3, 7])
    label = torch.from_numpy(rng.choice([0, 3, 7, 9, 255], (6, 5)).astype(np.int64))  # 9: not prompted, 255: ignore
    loss = predictor_loss(probabilities, label, classes, 0.2)

    # by hand: scores log P_3, log P_7, log(0.2 · peak); softmax cross-entropy over the pixels labelled 0, 3 or 7
    p = probabilities.numpy().astype(np.float64)
    scores = np.concatenate([np.log(p), np.full((1, 6, 5), np.log(0.2 * p.max()))])
    column = {3: 0, 7: 1, 0: 2}
    terms = [
        np.log(np.exp(scores[:, y, x]).sum()) - scores[column[int(v)], y, x]
        for (y, x), v in np.ndenumerate(label.numpy())
        if int(v) in column
    ]
    assert loss.item() == pytest.approx(np.mean(terms), rel=1e-5)

    # the class its scores rank first is exactly what the zero-shot predictor outputs (same maps, already at label size)
    decision = np.array([3, 7, 0])[scores.argmax(0)]
    np.testing.assert_array_equal(decision, predict(p, classes, (6, 5), 0.2))
    # background a prompted word: no background column, argmax over the classes only
    only = predictor_loss(probabilities, label, classes, None)
    terms = [
        np.log(np.exp(np.log(p[:, y, x])).sum()) - np.log(p[column[int(v)], y, x])
        for (y, x), v in np.ndenumerate(label.numpy())
        if int(v) in (3, 7)
    ]
    assert only.item() == pytest.approx(np.mean(terms), rel=1e-5)
