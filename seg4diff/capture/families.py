"""The diffusers transformer families whose joint attention seg4diff reads and edits: one row each in FAMILIES.

A row says how a layer's query, key and value over the joint image+text sequence are formed (as the stock diffusers
processor forms them), how the joint attention output becomes what the stock processor returns, where the layers are,
and how one forward's image token grid and text length are read. A new family is a row and a qkv/output pair.

    qkv(attn, hidden_states, encoder_hidden_states, attention_mask, *rest) → Joint
    output(attn, out, image, text, dtype) → the stock processor's return value
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from diffusers.models.embeddings import apply_rotary_emb

Grid = tuple[int, int]


class Joint(NamedTuple):
    """A layer's joint attention inputs, (batch, head, joint token, dim) in its family's order."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    text_length: int | None  # None: the layer sees one joint sequence, split by the forward's text length


def sd3_joint_qkv(
    attn,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor | None = None,
    attention_mask=None,
    *args,
    **kwargs,
) -> Joint:
    """Returns SD3's joint attention inputs, order [image, text], as JointAttnProcessor2_0 forms them."""
    batch_size = hidden_states.shape[0]
    query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (t.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    if encoder_hidden_states is None:
        raise ValueError("SD3 joint attention needs encoder_hidden_states (the text tokens); the layer got none")
    text_q, text_k, text_v = (
        p(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
    )
    if attn.norm_added_q is not None:
        text_q = attn.norm_added_q(text_q)
    if attn.norm_added_k is not None:
        text_k = attn.norm_added_k(text_k)
    return Joint(
        torch.cat([query, text_q], dim=2),
        torch.cat([key, text_k], dim=2),
        torch.cat([value, text_v], dim=2),
        encoder_hidden_states.shape[1],
    )


def sd3_joint_output(
    attn, out: torch.Tensor, image: slice, text: slice, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (image, text) hidden states from the joint attention output (batch, head, image + text, dim)."""
    n_image = image.stop
    batch_size, heads, _, head_dim = out.shape
    out = out.transpose(1, 2).reshape(batch_size, -1, heads * head_dim).to(dtype)
    hidden_states, encoder_hidden_states = out[:, :n_image], out[:, n_image:]
    if not attn.context_pre_only:
        encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
    return attn.to_out[1](attn.to_out[0](hidden_states)), encoder_hidden_states


def flux_joint_qkv(
    attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None
) -> Joint:
    """Returns a FLUX layer's joint attention inputs, order [text, image], as FluxAttnProcessor forms them; a
    single-stream layer gets the joint sequence (its text length: None)."""
    if attention_mask is not None:
        raise NotImplementedError("FLUX attention masks are not supported by seg4diff's attention processors")
    from diffusers.models.transformers.transformer_flux import _get_qkv_projections

    query, key, value, text_q, text_k, text_v = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
    query, key, value = (t.unflatten(-1, (-1, attn.head_dim)) for t in (query, key, value))
    query, key = attn.norm_q(query), attn.norm_k(key)
    double_stream = attn.added_kv_proj_dim is not None
    if double_stream:
        text_q, text_k, text_v = (t.unflatten(-1, (-1, attn.head_dim)) for t in (text_q, text_k, text_v))
        text_q, text_k = attn.norm_added_q(text_q), attn.norm_added_k(text_k)
        query, key = torch.cat([text_q, query], dim=1), torch.cat([text_k, key], dim=1)
        value = torch.cat([text_v, value], dim=1)
    if image_rotary_emb is not None:
        query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
        key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
    text_length = encoder_hidden_states.shape[1] if double_stream else None
    return Joint(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), text_length)


def flux_joint_output(attn, out: torch.Tensor, image: slice, text: slice, dtype: torch.dtype):
    """Returns a FLUX layer's attention result from the joint output (batch, head, text + image, dim): (image, text)
    hidden states for a double-stream layer, the joint sequence for a single-stream one."""
    n_text = text.stop
    out = out.transpose(1, 2).flatten(2, 3).to(dtype)
    if attn.added_kv_proj_dim is not None:  # double-stream
        encoder_hidden_states, hidden_states = out.split_with_sizes([n_text, out.shape[1] - n_text], dim=1)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
        return hidden_states, attn.to_add_out(encoder_hidden_states.contiguous())
    return out


def _forward_argument(args: tuple, kwargs: dict, name: str, position: int):
    return kwargs.get(name, args[position] if len(args) > position else None)


def latent_grid(transformer: torch.nn.Module, args: tuple, kwargs: dict) -> Grid | None:
    """Returns the image token grid of a forward from its (batch, channel, H, W) latent and the patch size."""
    hidden = _forward_argument(args, kwargs, "hidden_states", 0)
    if hidden is None or hidden.ndim != 4:
        return None
    patch = transformer.config.patch_size
    return hidden.shape[-2] // patch, hidden.shape[-1] // patch


def image_ids_grid(transformer: torch.nn.Module, args: tuple, kwargs: dict) -> Grid | None:
    """Returns the image token grid of a forward from its image ids' (row, column) positions."""
    ids = kwargs.get("img_ids")
    if ids is None:
        return None
    ids = ids.reshape(-1, ids.shape[-1])
    return int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1


def encoder_text_length(args: tuple, kwargs: dict) -> int | None:
    """Returns the text length of a forward: its encoder_hidden_states' sequence length."""
    text = _forward_argument(args, kwargs, "encoder_hidden_states", 1)
    return None if text is None else text.shape[1]


@dataclass(frozen=True)
class Family:
    """How one diffusers transformer class's joint attention is formed, split back and found."""

    name: str  # the transformer class, as diffusers names it
    order: tuple[Literal["image", "text"], Literal["image", "text"]]  # the joint sequence's order
    qkv: Callable[..., Joint]
    output: Callable[..., Any]
    layers: tuple[str, ...]  # the transformer's layer lists, in depth order
    token_grid: Callable[[torch.nn.Module, tuple, dict], Grid | None]
    text_length: Callable[[tuple, dict], int | None] = encoder_text_length
    attention: str = "attn"  # a layer's joint-attention module (SD3.5's attn2 is image-only and left alone)

    def split(self, joint_length: int, text_length: int) -> tuple[slice, slice]:
        """Returns the (image, text) token slices of the joint sequence."""
        if self.order == ("image", "text"):
            n_image = joint_length - text_length
            return slice(0, n_image), slice(n_image, None)
        return slice(text_length, None), slice(0, text_length)

    def modules(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        """Returns the joint attention module of every layer, in depth order."""
        return [getattr(layer, self.attention) for layers in self.layers for layer in getattr(transformer, layers)]


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            "SD3Transformer2DModel",
            ("image", "text"),
            sd3_joint_qkv,
            sd3_joint_output,
            layers=("transformer_blocks",),
            token_grid=latent_grid,
        ),
        Family(
            "FluxTransformer2DModel",
            ("text", "image"),
            flux_joint_qkv,
            flux_joint_output,
            layers=("transformer_blocks", "single_transformer_blocks"),
            token_grid=image_ids_grid,
        ),
    )
}


def family_of(transformer: torch.nn.Module) -> Family:
    """Returns the FAMILIES row of `transformer`'s class."""
    name = type(transformer).__name__
    if name not in FAMILIES:
        raise TypeError(
            f"seg4diff's attention hooks support {' and '.join(FAMILIES)}, not {name}: add a row to "
            "FAMILIES in seg4diff/capture/families.py"
        )
    return FAMILIES[name]


def joint_attention_modules(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """Returns the joint (image+text) attention module of every layer, in depth order: SD3/SD3.5's
    `transformer_blocks[i].attn`; FLUX's double-stream layers, then its single-stream layers."""
    return family_of(transformer).modules(transformer)


def token_grid(transformer: torch.nn.Module, args: tuple, kwargs: dict) -> Grid | None:
    """Returns the image token grid (rows, columns) of one forward call, or None if it cannot be read."""
    return family_of(transformer).token_grid(transformer, args, kwargs)


def all_layers(transformer: torch.nn.Module) -> list[int]:
    """Returns the index of every joint-attention layer of `transformer` (the default of every `layers` setting)."""
    return list(range(len(joint_attention_modules(transformer))))
