"""The noising protocol: seeded per-sample noise (the same whatever the batching), training noise levels, and the
scheduler timesteps of noise levels."""

from __future__ import annotations

import numpy as np
import torch

TRAIN_TIMESTEPS = 1000  # num_train_timesteps of every flow-matching scheduler here (SD3, FLUX, the organism)


def sample_noise(shape: tuple[int, ...], seed: int, sample_index: int) -> torch.Tensor:
    """Returns ε for one sample, seeded by (seed, sample index) so it is the same whatever the batching."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + sample_index))


def scheduler_timesteps(sigmas) -> np.ndarray:
    """Returns the scheduler timesteps of noise levels σ, what the transformer is given: σ · num_train_timesteps."""
    return np.asarray(sigmas, dtype=np.float64) * TRAIN_TIMESTEPS


def logit_normal(generator: torch.Generator, n: int, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """Returns n noise levels σ = sigmoid(N(mean, std)): SD3's logit-normal sampling of training noise levels."""
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator))
