"""MAGNET's mask losses on attention logits: sigmoid focal and dice, and the Hungarian matcher for caption mode."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


def sigmoid_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Returns the mean focal loss −α_t (1 − p_t)^γ log p_t with p = sigmoid(logits) (the sigmoid applied — the
    authors' code modulated with the raw logits), over `valid` pixels when given."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    loss = alpha_t * (1 - p_t) ** gamma * ce
    if valid is None:
        return loss.mean()
    valid = valid.to(loss.dtype).expand_as(loss)
    return (loss * valid).sum() / valid.sum().clamp_min(1.0)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Returns the mean over maps of 1 − (2·Σ p·m + 1) / (Σ p + Σ m + 1), p = sigmoid(logits), maps (n, H, W)."""
    p = torch.sigmoid(logits)
    if valid is not None:
        p, targets = p * valid, targets * valid
    p, m = p.flatten(1), targets.flatten(1)
    return (1 - (2 * (p * m).sum(-1) + 1) / (p.sum(-1) + m.sum(-1) + 1)).mean()


def predictor_loss(
    probabilities: torch.Tensor,
    label: torch.Tensor,
    classes: np.ndarray,
    background_threshold: float | None,
    background_id: int = 0,
) -> torch.Tensor:
    """Returns the pixel cross-entropy of the zero-shot predictor's own decision (zero_shot.segment_batch with the
    `probability` predictor).

    `probabilities` (class, H, W): each prompted class's attention map at label size. The predictor takes the argmax
    class and calls a pixel background when its best map is below `background_threshold` × the image's peak; its
    scores are therefore log P_c and, for background, log(threshold · peak) (peak held fixed). Labels that are neither
    a prompted class nor background (the ignore index among them) are left out.
    """
    scores = probabilities.clamp_min(1e-12).log()
    target = torch.full(label.shape, -100, dtype=torch.long, device=label.device)
    for k, c in enumerate(classes.tolist()):
        target[label == c] = k
    if background_threshold is not None:
        peak = probabilities.detach().amax()
        background = torch.log(background_threshold * peak).expand(1, *scores.shape[1:])
        scores = torch.cat([scores, background])
        target[label == background_id] = len(classes)
    if not (target >= 0).any():
        return scores.sum() * 0
    return F.cross_entropy(scores[None], target[None], ignore_index=-100)


def pairwise_costs(
    logits: torch.Tensor, masks: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (focal, dice) cost matrices (candidates × masks) for candidate logit maps (n, H, W) and masks (m, H,
    W)."""
    x, m = logits.flatten(1).float(), masks.flatten(1).float()
    p = torch.sigmoid(x)
    pos = alpha * (1 - p) ** gamma * F.binary_cross_entropy_with_logits(x, torch.ones_like(x), reduction="none")
    neg = (1 - alpha) * p**gamma * F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none")
    focal = (pos @ m.T + neg @ (1 - m).T) / x.shape[1]
    dice = 1 - (2 * p @ m.T + 1) / (p.sum(-1)[:, None] + m.sum(-1)[None, :] + 1)
    return focal, dice


def hungarian_match(
    logits: torch.Tensor, masks: torch.Tensor, focal_weight: float = 0.02, dice_weight: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (candidate indices, mask indices) of the assignment minimising focal_weight·focal + dice_weight·dice."""
    with torch.no_grad():
        focal, dice = pairwise_costs(logits, masks)
        cost = (focal_weight * focal + dice_weight * dice).cpu().numpy()
    return linear_sum_assignment(cost)
