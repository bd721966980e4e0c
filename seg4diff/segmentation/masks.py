"""Attention → semantic prediction, as Seg4Diff does it: per-class token means, bilinear upsampling, argmax."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def class_maps(token_maps: np.ndarray, token_class: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
    """Returns (…, class, y, x): for each class in `class_ids`, the mean of its tokens' maps (…, token, y, x).

    Tokens of class −1 (e.g. "and") and empty slots are ignored; a class without tokens gets a map of −inf.
    """
    token_maps = np.asarray(token_maps, dtype=np.float32)
    out = np.full((*token_maps.shape[:-3], len(class_ids), *token_maps.shape[-2:]), -np.inf, dtype=np.float32)
    for k, class_id in enumerate(class_ids):
        mine = token_class == class_id
        if mine.any():
            out[..., k, :, :] = token_maps[..., mine, :, :].mean(axis=-3)
    return out


def upsample(maps: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Returns (…, class, H, W) maps bilinearly resized (align_corners=False) to the label resolution."""
    return _upsample(maps, size).numpy()


def _upsample(maps: np.ndarray, size: int | tuple[int, int]) -> torch.Tensor:
    size = (size, size) if isinstance(size, int) else size
    tensor = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
    lead = tensor.shape[:-3]
    flat = tensor.reshape(-1, *tensor.shape[-3:])
    finite = torch.isfinite(flat)
    resized = F.interpolate(torch.where(finite, flat, torch.zeros(())), size=size, mode="bilinear", align_corners=False)
    missing = ~finite.all(dim=-1).all(dim=-1)  # classes without tokens stay −inf
    resized[missing] = -torch.inf
    return resized.reshape(*lead, *resized.shape[-3:])


def predict(
    maps: np.ndarray,
    class_ids: np.ndarray,
    size: int | tuple[int, int],
    background_threshold: float | None = None,
    background_id: int = 0,
    background_logit: float | None = None,
) -> np.ndarray:
    """Returns (…, H, W) class ids: argmax over the upsampled class maps.

    With `background_threshold` (when background is not a prompted word), pixels whose best map value falls below
    that fraction of the image's highest value become `background_id`; with `background_logit`, pixels whose best
    map value (a logit) falls below that value.
    """
    best, index = _upsample(maps, size).max(dim=-3)  # torch: argmax over a middle axis is slow in numpy
    prediction = np.asarray(class_ids)[index.numpy()]
    if background_threshold is not None:
        peak = best.amax(dim=(-2, -1), keepdim=True)
        prediction = np.where((best < background_threshold * peak).numpy(), background_id, prediction)
    if background_logit is not None:
        prediction = np.where((best < background_logit).numpy(), background_id, prediction)
    return prediction
