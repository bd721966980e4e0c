"""SD3, SD3.5 and FLUX.1: the families seg4diff began with."""

import torch
from tiny_pipelines import tiny_flux_transformer, tiny_sd3_transformer

from family_cases import Case
from seg4diff.testing.reference import naive_flux_attention, naive_sd3_attention

TEXT = 7
ROWS_, COLS_ = 4, 6  # the image token grid


def _sd3_inputs(transformer):
    g, c = torch.Generator().manual_seed(0), transformer.config
    return {
        "hidden_states": torch.randn(2, c.in_channels, 2 * ROWS_, 2 * COLS_, generator=g),
        "encoder_hidden_states": torch.randn(2, TEXT, c.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(2, c.pooled_projection_dim, generator=g),
        "timestep": torch.tensor([500.0, 250.0]),
        "return_dict": False,
    }


def _flux_inputs(transformer):
    g, c = torch.Generator().manual_seed(0), transformer.config
    ids = torch.zeros(ROWS_, COLS_, 3)
    ids[..., 1] += torch.arange(ROWS_)[:, None]
    ids[..., 2] += torch.arange(COLS_)[None, :]
    return {
        "hidden_states": torch.randn(2, ROWS_ * COLS_, c.in_channels, generator=g),
        "encoder_hidden_states": torch.randn(2, TEXT, c.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(2, c.pooled_projection_dim, generator=g),
        "timestep": torch.tensor([0.5, 0.25]),
        "img_ids": ids.reshape(-1, 3),
        "txt_ids": torch.zeros(TEXT, 3),
        "return_dict": False,
    }


def _sd3_naive(attn, args, kwargs):
    return naive_sd3_attention(attn, kwargs["hidden_states"], kwargs["encoder_hidden_states"])


def _flux_naive(attn, args, kwargs):
    return naive_flux_attention(
        attn, kwargs["hidden_states"], kwargs.get("encoder_hidden_states"), kwargs["image_rotary_emb"]
    )


CASES = [
    Case("SD3Transformer2DModel", tiny_sd3_transformer, _sd3_inputs, _sd3_naive, (ROWS_, COLS_), TEXT, True),
    Case("FluxTransformer2DModel", tiny_flux_transformer, _flux_inputs, _flux_naive, (ROWS_, COLS_), TEXT, False),
]
