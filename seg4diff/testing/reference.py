"""Naive references for checking `seg4diff.capture`: the full joint softmax(QKᵀ/√d), built from a module's own
layers.

These materialise the N×N matrix on purpose (tests and benchmarks only); they share no code with the capture.
"""

from __future__ import annotations

import math

import torch
from diffusers.models.embeddings import apply_rotary_emb


def naive_sd3_attention(attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
    """Returns the (batch, head, query, key) joint probabilities of an SD3/SD3.5 block, order [image, text]."""
    batch, heads = hidden_states.shape[0], attn.heads
    split = lambda t: t.view(batch, -1, heads, t.shape[-1] // heads).transpose(1, 2)  # noqa: E731
    q, k = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states))
    tq, tk = split(attn.add_q_proj(encoder_hidden_states)), split(attn.add_k_proj(encoder_hidden_states))
    if attn.norm_q is not None:
        q, k = attn.norm_q(q), attn.norm_k(k)
    if attn.norm_added_q is not None:
        tq, tk = attn.norm_added_q(tq), attn.norm_added_k(tk)
    q, k = torch.cat([q, tq], 2).float(), torch.cat([k, tk], 2).float()
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)


def naive_flux_attention(
    attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None, image_rotary_emb
) -> torch.Tensor:
    """Returns the joint probabilities of a FLUX block, order [text, image]; a single-stream block gets the joint
    sequence."""
    q = attn.norm_q(attn.to_q(hidden_states).unflatten(-1, (-1, attn.head_dim)))
    k = attn.norm_k(attn.to_k(hidden_states).unflatten(-1, (-1, attn.head_dim)))
    if encoder_hidden_states is not None:
        tq = attn.norm_added_q(attn.add_q_proj(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim)))
        tk = attn.norm_added_k(attn.add_k_proj(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim)))
        q, k = torch.cat([tq, q], 1), torch.cat([tk, k], 1)
    q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1).transpose(1, 2).float()
    k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1).transpose(1, 2).float()
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(attn.head_dim), dim=-1)
