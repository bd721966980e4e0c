"""Softmax attention that also returns each query row's log-sum-exp over all keys, from a fused kernel.

The log-sum-exp is what lets a hook form only the small image×text logits it keeps and still normalise them over the
whole joint sequence: exp(q·k·scale − lse) is the probability the layer used, without the N×N matrix.
"""

from __future__ import annotations

import torch

QUERY_CHUNK = 1024


def additive_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Returns an SDPA `attn_mask` as an additive bias of `dtype` (a boolean mask: 0 where kept, −inf where not)."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def chunked_attention_with_lse(
    query, key, value, scale: float, chunk: int = QUERY_CHUNK, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (output, logsumexp) of softmax attention, (batch, head, query, ·), materialising chunk × keys at a
    time; `bias` (broadcastable to batch, head, query, key) is added to the logits."""
    outputs, lses = [], []
    if bias is not None:
        bias = bias.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
    for start in range(0, query.shape[2], chunk):
        logits = torch.matmul(query[:, :, start : start + chunk], key.transpose(-1, -2)).float() * scale
        if bias is not None:
            logits = logits + bias[:, :, start : start + chunk].float()
        lse = torch.logsumexp(logits, dim=-1)
        outputs.append(torch.matmul(torch.exp(logits - lse[..., None]).to(value.dtype), value))
        lses.append(lse)
    return torch.cat(outputs, dim=2), torch.cat(lses, dim=2)


def _low_precision(query: torch.Tensor) -> bool:
    head_dim = query.shape[-1]
    return query.dtype in (torch.float16, torch.bfloat16) and head_dim % 8 == 0 and head_dim <= 256


_CUDA_KERNEL: dict[tuple, str] = {}  # (device, dtype, head dim) → the first kernel that ran there


def _cuda_attention_with_lse(query, key, value, scale: float, bias=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cuDNN's fused kernel (what stock SDPA picks on Hopper), else flash, else memory-efficient; each returns the
    lse. With a bias only the memory-efficient kernel takes it."""
    setting = (query.device, query.dtype, query.shape[-1], bias is not None)
    candidates = ("cudnn", "flash", "efficient") if _low_precision(query) and bias is None else ("efficient",)
    aten = torch.ops.aten
    for kernel in candidates[candidates.index(_CUDA_KERNEL.get(setting, candidates[0])) :]:
        try:
            if kernel == "cudnn":
                out, lse = aten._scaled_dot_product_cudnn_attention(
                    query, key, value, None, True, 0.0, False, False, scale=scale
                )[:2]
            elif kernel == "flash":
                out, lse = aten._scaled_dot_product_flash_attention(query, key, value, 0.0, False, False, scale=scale)[
                    :2
                ]
            else:
                if bias is not None:
                    bias = bias.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
                out, lse = aten._scaled_dot_product_efficient_attention(
                    query, key, value, bias, True, 0.0, False, scale=scale
                )[:2]
        except RuntimeError:  # this build, card or shape lacks the kernel: try the next one
            if kernel == candidates[-1]:
                raise
            continue
        _CUDA_KERNEL[setting] = kernel
        lse = lse.squeeze(-1) if lse.ndim == 4 else lse
        return out, lse[..., : query.shape[2]]
    raise AssertionError("unreachable")


def attention_with_lse(
    query, key, value, scale: float | None = None, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (output, logsumexp over all keys) for (batch, head, seq, dim) inputs, from a fused kernel when there is
    one; `bias`: an additive mask of the query's dtype, broadcastable to (batch, head, query, key)."""
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    if query.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, False, attn_mask=bias, scale=scale
        )
    if query.device.type == "cuda":
        return _cuda_attention_with_lse(query, key, value, scale, bias)
    return chunked_attention_with_lse(query, key, value, scale, bias=bias)
