"""The noising protocol: seeded per-sample noise, the same whatever the batching."""
from __future__ import annotations

import torch


def sample_noise(shape: tuple[int, ...], seed: int, sample_index: int) -> torch.Tensor:
    """Returns ε for one sample, seeded by (seed, sample index) so it is the same whatever the batching."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + sample_index))
