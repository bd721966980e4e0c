import itertools
import math

import pytest
import torch

from seg4diff.losses import dice_loss, hungarian_match, pairwise_costs, sigmoid_focal_loss


def test_focal_loss_against_hand_computation():
    logits = torch.tensor([[2.0, -1.0]])
    targets = torch.tensor([[1.0, 0.0]])
    p1, p2 = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(1))
    expected = (0.25 * (1 - p1) ** 2 * -math.log(p1) + 0.75 * p2 ** 2 * -math.log(1 - p2)) / 2
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
        assert focal[i, j].item() == pytest.approx(sigmoid_focal_loss(logits[i:i + 1], masks[j:j + 1]).item(), rel=1e-5)
        assert dice[i, j].item() == pytest.approx(dice_loss(logits[i:i + 1], masks[j:j + 1]).item(), rel=1e-5)


def test_matcher_against_brute_force():
    g = torch.Generator().manual_seed(3)
    logits, masks = 3 * torch.randn(5, 6, 6, generator=g), (torch.rand(3, 6, 6, generator=g) > 0.6).float()
    rows, cols = hungarian_match(logits, masks)
    focal, dice = pairwise_costs(logits, masks)
    cost = (0.02 * focal + dice).numpy()
    best = min(itertools.permutations(range(5), 3), key=lambda chosen: sum(cost[c, j] for j, c in enumerate(chosen)))
    assert sorted(zip(cols, rows)) == [(j, c) for j, c in enumerate(best)]
    assert cost[rows, cols].sum() == pytest.approx(sum(cost[c, j] for j, c in enumerate(best)))
