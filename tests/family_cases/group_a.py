"""FLUX.2, FLUX.3, Chroma, Bria 3.2, Bria FIBO, LongCat-Image and Ovis-Image: FLUX-style families.

Every joint layer here concatenates [text, image] and applies one rotary embedding over the joint sequence; the naive
references redo each stock processor's q/k formation in plain torch (projections, per-head RMS norms, rotary
embedding, the mask the module receives) and take the full softmax. FLUX.3's only joint layers
(`single_transformer_blocks`) project text and image tokens with one to_q/to_k/to_v/to_out; its image-only blocks
(`mode_blocks["image"]`) never see the text.
"""

from __future__ import annotations

import inspect
import math

import torch
from diffusers import (
    BriaFiboTransformer2DModel,
    BriaTransformer2DModel,
    ChromaTransformer2DModel,
    Flux2Transformer2DModel,
    LongCatImageTransformer2DModel,
    OvisImageTransformer2DModel,
)
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux3 import Flux3Transformer2DModel

from family_cases import Case

TEXT = 7  # text tokens
ROWS_, COLS_ = 4, 6  # the image token grid of every case (non-square on purpose)


# ---- naive references ------------------------------------------------------------------------------------------


def _arguments(module: torch.nn.Module, args: tuple, kwargs: dict) -> dict:
    """Returns the arguments of a call of `module` by name, its `**kwargs` spread in (e.g. `image_rotary_emb`, which
    reaches the legacy `Attention` through its `**cross_attention_kwargs`)."""
    signature = inspect.signature(module.forward)
    bound = signature.bind(*args, **kwargs).arguments
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            bound.update(bound.pop(name, {}))
    return bound


def _joint_softmax(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Returns softmax(q·kᵀ/√d + mask) (batch, head, query, key) in fp32 from (batch, token, head, dim) q and k; a
    boolean mask keeps its True entries, a float one is added to the logits (as SDPA reads them)."""
    query, key = query.transpose(1, 2).float(), key.transpose(1, 2).float()
    logits = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
    if mask is not None:
        mask = mask.unsqueeze(1).unsqueeze(1) if mask.ndim == 2 else mask  # as diffusers' native backend does
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.float()
    return torch.softmax(logits, dim=-1)


def _naive_flux_style(attn, args, kwargs) -> torch.Tensor:
    """Returns the joint probabilities [text, image] of a FLUX-style processor (Flux2, Flux3, Chroma/FLUX, Bria, Bria
    FIBO, LongCat-Image, Ovis-Image): to_q/to_k per head, RMS-normed, the text's add_q/add_k_proj (normed by
    norm_added_q/k) put first in a double-stream block, the rotary embedding over the joint sequence, the module's
    mask. A single-stream (or FLUX.3 joint) block gets the joint sequence as `hidden_states`."""
    a = _arguments(attn, args, kwargs)
    heads = lambda t: t.unflatten(-1, (attn.heads, -1))
    hidden, context = a["hidden_states"], a.get("encoder_hidden_states")
    query, key = attn.norm_q(heads(attn.to_q(hidden))), attn.norm_k(heads(attn.to_k(hidden)))
    if context is not None and attn.added_kv_proj_dim is not None:
        text_query = attn.norm_added_q(heads(attn.add_q_proj(context)))
        text_key = attn.norm_added_k(heads(attn.add_k_proj(context)))
        query, key = torch.cat([text_query, query], 1), torch.cat([text_key, key], 1)
    rotary = a.get("image_rotary_emb")
    if rotary is not None:
        query = apply_rotary_emb(query, rotary, sequence_dim=1)
        key = apply_rotary_emb(key, rotary, sequence_dim=1)
    return _joint_softmax(query, key, a.get("attention_mask"))


def _naive_flux2(attn, args, kwargs) -> torch.Tensor:
    """Returns the joint probabilities [text, image] of a FLUX.2 layer: a double-stream block as FLUX-style; a
    single-stream block's q and k are the first two of three inner-width chunks at the head of its fused
    `to_qkv_mlp_proj` output (the MLP input follows), then RMS-normed per head and rotated."""
    if not hasattr(attn, "to_qkv_mlp_proj"):
        return _naive_flux_style(attn, args, kwargs)
    a = _arguments(attn, args, kwargs)
    qkv = attn.to_qkv_mlp_proj(a["hidden_states"])[..., : 3 * attn.inner_dim]
    query, key, _ = qkv.chunk(3, dim=-1)
    query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
    key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
    rotary = a.get("image_rotary_emb")
    if rotary is not None:
        query = apply_rotary_emb(query, rotary, sequence_dim=1)
        key = apply_rotary_emb(key, rotary, sequence_dim=1)
    return _joint_softmax(query, key, a.get("attention_mask"))


# ---- inputs ------------------------------------------------------------------------------------------------------


def _grid_ids(axes: int, row: int, col: int, start: float = 0.0, step: float = 1.0) -> torch.Tensor:
    """Returns (ROWS_·COLS_, axes) image position ids, row-major: the grid row in column `row`, the column in `col`
    (each start + step·index), every other axis 0."""
    ids = torch.zeros(ROWS_, COLS_, axes)
    ids[..., row] = start + step * torch.arange(ROWS_)[:, None]
    ids[..., col] = start + step * torch.arange(COLS_)[None, :]
    return ids.reshape(-1, axes)


def _common(transformer, generator: torch.Generator) -> dict:
    """Returns the kwargs every case shares: (2, 24, in_channels) packed latents, (2, TEXT, joint_attention_dim) text,
    two timesteps in [0, 1], return_dict=False."""
    c = transformer.config
    return {
        "hidden_states": torch.randn(2, ROWS_ * COLS_, c.in_channels, generator=generator),
        "encoder_hidden_states": torch.randn(2, TEXT, c.joint_attention_dim, generator=generator),
        "timestep": torch.tensor([0.5, 0.25]),
        "return_dict": False,
    }


def _flux_ids() -> tuple[torch.Tensor, torch.Tensor]:
    """Returns FLUX.1-style (image ids, text ids): (t, row, column) with text all zero, as the pipelines form them."""
    return _grid_ids(3, 1, 2), torch.zeros(TEXT, 3)


def _flux2_inputs(transformer) -> dict:
    """Returns a FLUX.2 forward's kwargs: batched 4-axis (t, h, w, l) ids, text along l, and a guidance scale."""
    inputs = _common(transformer, torch.Generator().manual_seed(0))
    txt_ids = torch.zeros(TEXT, 4)
    txt_ids[:, 3] = torch.arange(TEXT)
    inputs |= {"img_ids": _grid_ids(4, 1, 2).expand(2, -1, -1), "txt_ids": txt_ids.expand(2, -1, -1)}
    return inputs | {"guidance": torch.tensor([4.0, 4.0])}


def _flux3_inputs(transformer) -> dict:
    """Returns a FLUX.3 text-to-image forward's kwargs: (t, h, w, l) ids with h and w scaled by 0.5, text along l."""
    inputs = _common(transformer, torch.Generator().manual_seed(0))
    txt_ids = torch.zeros(TEXT, 4)
    txt_ids[:, 3] = torch.arange(TEXT)
    return inputs | {"img_ids": _grid_ids(4, 1, 2, step=0.5), "txt_ids": txt_ids}


def _chroma_inputs(transformer) -> dict:
    """Returns a Chroma forward's kwargs with the mask ChromaPipeline always builds: text kept up to and including the
    first padding token (sample 0 has 4 tokens + 1 pad kept, 2 masked; sample 1 fills all 7), image all ones; a float
    mask, as the pipeline casts it to the prompt dtype."""
    inputs = _common(transformer, torch.Generator().manual_seed(0))
    img_ids, txt_ids = _flux_ids()
    text = (torch.arange(TEXT)[None] <= torch.tensor([[4], [TEXT]])).float()
    mask = torch.cat([text, torch.ones(2, ROWS_ * COLS_, dtype=torch.bool)], dim=1)
    return inputs | {"img_ids": img_ids, "txt_ids": txt_ids, "attention_mask": mask}


def _bria_inputs(transformer) -> dict:
    """Returns a Bria 3.2 forward's kwargs: batched FLUX-style ids, as BriaPipeline passes them."""
    inputs = _common(transformer, torch.Generator().manual_seed(0))
    img_ids, txt_ids = _flux_ids()
    timestep = inputs["timestep"] * 1000  # BriaPipeline passes the scheduler's timesteps, in [0, 1000]
    return inputs | {"img_ids": img_ids.expand(2, -1, -1), "txt_ids": txt_ids.expand(2, -1, -1), "timestep": timestep}


def _bria_fibo_inputs(transformer) -> dict:
    """Returns a Bria FIBO forward's kwargs: FLUX-style ids and one text-encoder layer per block (its half of each
    block's text width); no padding, so no mask (the pipeline passes one only when a prompt is padded)."""
    generator = torch.Generator().manual_seed(0)
    inputs = _common(transformer, generator)
    c = transformer.config
    blocks = c.num_layers + c.num_single_layers
    layers = [torch.randn(2, TEXT, c.text_encoder_dim, generator=generator) for _ in range(blocks)]
    img_ids, txt_ids = _flux_ids()
    timestep = inputs["timestep"] * 1000  # BriaFiboPipeline passes the scheduler's timesteps, in [0, 1000]
    return inputs | {"img_ids": img_ids, "txt_ids": txt_ids, "text_encoder_layers": layers, "timestep": timestep}


def _longcat_inputs(transformer) -> dict:
    """Returns a LongCat-Image forward's kwargs: text ids (0, i, i), image ids (1, 512 + row, 512 + column), as the
    pipeline forms them (512: its tokenizer length)."""
    inputs = _common(transformer, torch.Generator().manual_seed(0))
    img_ids = _grid_ids(3, 1, 2, start=512.0)
    img_ids[:, 0] = 1
    txt_ids = torch.zeros(TEXT, 3)
    txt_ids[:, 1] = txt_ids[:, 2] = torch.arange(TEXT)
    return inputs | {"img_ids": img_ids, "txt_ids": txt_ids}


def _ovis_inputs(transformer) -> dict:
    """Returns an Ovis-Image forward's kwargs: FLUX-style image ids, text ids (0, i, i) as OvisImagePipeline forms."""
    inputs = _common(transformer, torch.Generator().manual_seed(0))
    txt_ids = torch.zeros(TEXT, 3)
    txt_ids[:, 1] = txt_ids[:, 2] = torch.arange(TEXT)
    return inputs | {"img_ids": _grid_ids(3, 1, 2), "txt_ids": txt_ids}


# ---- tiny transformers -------------------------------------------------------------------------------------------

WIDTH = {"attention_head_dim": 8, "num_attention_heads": 2}  # 16 wide, 2 heads of 8


def _seeded(build):
    """Returns `build` wrapped to seed torch with 0 first and to return its module in fp32 eval mode."""

    def seeded():
        torch.manual_seed(0)
        return build().float().eval()

    seeded.__doc__ = build.__doc__
    return seeded


@_seeded
def tiny_flux2():
    """Returns a 1 double + 1 single block FLUX.2 transformer (4 rotary axes of 2)."""
    return Flux2Transformer2DModel(
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        joint_attention_dim=16,
        timestep_guidance_channels=16,
        axes_dims_rope=(2, 2, 2, 2),
        **WIDTH,
    )


@_seeded
def tiny_flux3():
    """Returns a FLUX.3 transformer with 1 per-mode block per mode and 2 joint single blocks."""
    return Flux3Transformer2DModel(
        in_channels=16,
        cond_in_channels=16,
        num_layers=1,
        num_single_layers=2,
        joint_attention_dim=16,
        timestep_channels=16,
        axes_dims_rope=(2, 2, 2, 2),
        **WIDTH,
    )


@_seeded
def tiny_chroma():
    """Returns a 1 double + 1 single block Chroma transformer with a 1-layer approximator."""
    return ChromaTransformer2DModel(
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        joint_attention_dim=16,
        axes_dims_rope=(2, 2, 4),
        approximator_num_channels=16,
        approximator_hidden_dim=32,
        approximator_layers=1,
        **WIDTH,
    )


@_seeded
def tiny_bria():
    """Returns a 1 double + 1 single block Bria 3.2 transformer."""
    return BriaTransformer2DModel(
        in_channels=16, num_layers=1, num_single_layers=1, joint_attention_dim=16, axes_dims_rope=[2, 2, 4], **WIDTH
    )


@_seeded
def tiny_bria_fibo():
    """Returns a 1 double + 1 single block Bria FIBO transformer."""
    return BriaFiboTransformer2DModel(
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        joint_attention_dim=16,
        axes_dims_rope=[2, 2, 4],
        text_encoder_dim=16,
        **WIDTH,
    )


@_seeded
def tiny_longcat():
    """Returns a 1 double + 1 single block LongCat-Image transformer."""
    return LongCatImageTransformer2DModel(
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        joint_attention_dim=16,
        pooled_projection_dim=16,
        axes_dims_rope=[2, 2, 4],
        **WIDTH,
    )


@_seeded
def tiny_ovis():
    """Returns a 1 double + 1 single block Ovis-Image transformer."""
    return OvisImageTransformer2DModel(
        in_channels=16,
        out_channels=None,
        num_layers=1,
        num_single_layers=1,
        joint_attention_dim=16,
        axes_dims_rope=(2, 2, 4),
        **WIDTH,
    )


GRID = (ROWS_, COLS_)
CASES = [
    Case("Flux3Transformer2DModel", tiny_flux3, _flux3_inputs, _naive_flux_style, GRID, TEXT, False),
    Case("Flux2Transformer2DModel", tiny_flux2, _flux2_inputs, _naive_flux2, GRID, TEXT, False),
    Case("ChromaTransformer2DModel", tiny_chroma, _chroma_inputs, _naive_flux_style, GRID, TEXT, False),
    Case("BriaTransformer2DModel", tiny_bria, _bria_inputs, _naive_flux_style, GRID, TEXT, False),
    Case("BriaFiboTransformer2DModel", tiny_bria_fibo, _bria_fibo_inputs, _naive_flux_style, GRID, TEXT, False),
    Case("LongCatImageTransformer2DModel", tiny_longcat, _longcat_inputs, _naive_flux_style, GRID, TEXT, False),
    Case("OvisImageTransformer2DModel", tiny_ovis, _ovis_inputs, _naive_flux_style, GRID, TEXT, False),
]
