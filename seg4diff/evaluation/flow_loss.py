"""Flow-matching loss at fixed (seeded) noise on held-out images: the same numbers for the same model, so two models (or
a model and its perturbed self) compare per sample."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

from seg4diff.backbones.backbone import Backbone, pixels_of
from seg4diff.data.prepared import class_names
from seg4diff.prompts import PromptStyle, build_prompt

HELDOUT_SIGMAS = (0.1, 0.3, 0.5, 0.7, 0.9)


def heldout_flow_loss(
    backbone: Backbone, prepared: xr.Dataset, seed: int, limit: int, style: PromptStyle, batch_size: int = 16
) -> float:
    """Returns the mean flow-matching MSE on held-out samples at fixed noise and fixed σ ∈ {0.1, …, 0.9} (gt-class
    prompts)."""
    return float(flow_losses(backbone, prepared, seed, limit, style, HELDOUT_SIGMAS, batch_size).mean())


@torch.no_grad()
def flow_losses(
    backbone: Backbone,
    prepared: xr.Dataset,
    seed: int,
    limit: int,
    style: PromptStyle,
    sigmas: tuple[float, ...] = HELDOUT_SIGMAS,
    batch_size: int = 16,
) -> np.ndarray:
    """Returns each of the first `limit` samples' flow-matching MSE averaged over `sigmas`, at fixed (seeded) noise:
    the same numbers for the same model, so two models (or a model and its perturbed self) compare per sample."""
    names = class_names(prepared)
    n = min(limit, prepared.sizes["sample"])
    losses = np.zeros(n)
    for start in range(0, n, batch_size):
        rows = prepared.isel(sample=list(range(start, min(start + batch_size, n)))).load()
        prompts = [build_prompt(style, rows["present"].values[k], names, "")[0] for k in range(rows.sizes["sample"])]
        encoding = backbone.encode_prompts(prompts)
        x0 = backbone.encode_images(pixels_of(rows["image"].values))
        generator = torch.Generator().manual_seed(seed * 7919 + start)
        for sigma in sigmas:
            noise = torch.randn(x0.shape, generator=generator).to(x0)
            out = backbone.velocity(sigma * noise + (1 - sigma) * x0, sigma, encoding)
            per_sample = F.mse_loss(out.float(), (noise - x0).float(), reduction="none").flatten(1).mean(1)
            losses[start : start + x0.shape[0]] += per_sample.double().cpu().numpy() / len(sigmas)
    return losses
