"""CogView4, Lumina 2, AuraFlow, Krea 2, Ideogram 4 and PRX: tiny cases.

Every family here puts the text tokens first. HiDream-I1 is left out: its joint module sits two attributes below
the layer list (`double_stream_blocks[i].block.attn1`, which a Family's one-attribute `attention` cannot name), and a
non-square latent is padded to `max_seq` image slots between the image and the text tokens, which the image/text
split cannot skip.
"""

from __future__ import annotations

import math

import torch
from diffusers import (
    AuraFlowTransformer2DModel,
    CogView4Transformer2DModel,
    Ideogram4Transformer2DModel,
    Krea2Transformer2DModel,
    Lumina2Transformer2DModel,
    PRXTransformer2DModel,
)
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_ideogram4 import (
    IMAGE_POSITION_OFFSET,
    LLM_TOKEN_INDICATOR,
    OUTPUT_IMAGE_INDICATOR,
    SEQUENCE_PADDING_INDICATOR,
)

from family_cases import Case

TEXT = 7
ROWS_, COLS_ = 4, 6  # the image token grid of every case


def _argument(args: tuple, kwargs: dict, name: str, position: int):
    """Returns a forward's argument `name` (keyword, or positional at `position`), or None."""
    return kwargs.get(name, args[position] if len(args) > position else None)


# lora_layers: where MAGNET's LoRA goes. Only AuraFlow's MMDiT blocks and PRX's blocks project image tokens on their
# own; CogView4, Lumina 2, Krea 2 and Ideogram 4 have one set of projections for text and image tokens together, so
# their rows name those shared projections' layers (an adapter there changes the text tokens too).

# --- naive references ----------------------------------------------------------------------------------------------


def _softmax(query: torch.Tensor, key: torch.Tensor, scale: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Returns softmax(q·kᵀ·scale + mask) over the keys, (batch, head, query, key) in fp32, from (batch, head, token,
    dim) q and k; a boolean mask keeps its True entries, any other is added."""
    logits = query.float() @ key.float().transpose(-1, -2) * scale
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.float()
    return torch.softmax(logits, dim=-1)


def _cogview4_naive(attn, args, kwargs):
    """Returns a CogView4 block's joint probabilities, order [text, image]: one set of projections over the joint
    sequence, LayerNorm q/k, rotary on the image rows only, and the processor's 0/1 mask (added, not masking)."""
    text, image = kwargs["encoder_hidden_states"], kwargs["hidden_states"]
    joint, n_text = torch.cat([text, image], 1), text.shape[1]
    q = attn.norm_q(attn.to_q(joint).unflatten(2, (attn.heads, -1)).transpose(1, 2))
    k = attn.norm_k(attn.to_k(joint).unflatten(2, (attn.heads, -1)).transpose(1, 2))
    rotary = kwargs.get("image_rotary_emb")
    if rotary is not None:
        rotate = lambda x: apply_rotary_emb(x, rotary, use_real_unbind_dim=-2)  # noqa: E731
        q = torch.cat([q[:, :, :n_text], rotate(q[:, :, n_text:])], 2)
        k = torch.cat([k[:, :, :n_text], rotate(k[:, :, n_text:])], 2)
    mask = kwargs.get("attention_mask")
    if mask is not None:
        keep = torch.cat([mask.float(), torch.ones(image.shape[:2])], 1)
        mask = (keep[:, :, None] @ keep[:, None, :] > 0)[:, None].float()
    return _softmax(q, k, 1 / math.sqrt(q.shape[-1]), mask)


def _lumina2_naive(attn, args, kwargs):
    """Returns a Lumina 2 joint block's probabilities over its [caption, image] sequence: RMSNorm q/k, complex
    rotary, grouped k heads repeated, the key padding mask where the batch's captions differ in length."""
    hidden = kwargs["hidden_states"]
    batch, head_dim = hidden.shape[0], attn.to_q.out_features // attn.heads
    q = attn.norm_q(attn.to_q(hidden).view(batch, -1, attn.heads, head_dim))
    kv_heads = attn.to_k.out_features // head_dim
    k = attn.norm_k(attn.to_k(kwargs["encoder_hidden_states"]).view(batch, -1, kv_heads, head_dim))
    rotary = kwargs["image_rotary_emb"]
    q, k = apply_rotary_emb(q, rotary, use_real=False), apply_rotary_emb(k, rotary, use_real=False)
    k = k.repeat_interleave(attn.heads // k.shape[2], dim=2)
    mask = kwargs.get("attention_mask")
    mask = None if mask is None else mask.bool().view(batch, 1, 1, -1)
    return _softmax(q.transpose(1, 2), k.transpose(1, 2), attn.scale, mask)


def _auraflow_naive(attn, args, kwargs):
    """Returns an AuraFlow block's joint probabilities, order [register tokens + text, image]; a single-stream block
    gets the joint sequence as its hidden states."""
    hidden, text = kwargs["hidden_states"], kwargs.get("encoder_hidden_states")
    split = lambda t: t.view(hidden.shape[0], -1, attn.heads, t.shape[-1] // attn.heads)  # noqa: E731
    q, k = attn.norm_q(split(attn.to_q(hidden))), attn.norm_k(split(attn.to_k(hidden)))
    if text is not None:
        tq, tk = split(attn.add_q_proj(text)), split(attn.add_k_proj(text))
        tq = tq if attn.norm_added_q is None else attn.norm_added_q(tq)
        tk = tk if attn.norm_added_k is None else attn.norm_added_k(tk)
        q, k = torch.cat([tq, q], 1), torch.cat([tk, k], 1)
    return _softmax(q.transpose(1, 2), k.transpose(1, 2), attn.scale)


def _krea2_naive(attn, args, kwargs):
    """Returns a Krea 2 block's probabilities over its [text, image] sequence: zero-centred RMSNorm q/k, FLUX-style
    rotary over the whole sequence, k heads repeated per query group, the text key padding mask."""
    hidden = args[0]
    q = attn.norm_q(attn.to_q(hidden).unflatten(-1, (attn.num_heads, attn.head_dim)))
    k = attn.norm_k(attn.to_k(hidden).unflatten(-1, (attn.num_kv_heads, attn.head_dim)))
    rotary = kwargs.get("image_rotary_emb")
    if rotary is not None:
        q, k = apply_rotary_emb(q, rotary, sequence_dim=1), apply_rotary_emb(k, rotary, sequence_dim=1)
    k = k.repeat_interleave(attn.num_heads // attn.num_kv_heads, dim=2)
    return _softmax(q.transpose(1, 2), k.transpose(1, 2), attn.head_dim**-0.5, kwargs.get("attention_mask"))


def _ideogram4_naive(attn, args, kwargs):
    """Returns an Ideogram 4 block's probabilities over its packed [left-pad, text, image] sequence: RMSNorm q/k,
    rotate-half MRoPE, and the block-diagonal segment mask."""
    hidden = args[0]
    q = attn.norm_q(attn.to_q(hidden).unflatten(-1, (attn.num_heads, attn.head_dim)))
    k = attn.norm_k(attn.to_k(hidden).unflatten(-1, (attn.num_heads, attn.head_dim)))
    cos, sin = (t.unsqueeze(2) for t in kwargs["image_rotary_emb"])
    half = attn.head_dim // 2
    rotate = lambda x: x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin  # noqa: E731
    q, k = rotate(q), rotate(k)
    return _softmax(q.transpose(1, 2), k.transpose(1, 2), attn.head_dim**-0.5, kwargs["attention_mask"])


def _prx_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Returns x (…, dim) with each (even, odd) channel pair multiplied by its 2×2 rotation in `freqs` (…, dim/2,
    2, 2)."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    return (freqs.float() @ pairs[..., None])[..., 0].reshape(x.shape)


def _prx_naive(attn, args, kwargs):
    """Returns a PRX block's probabilities: image queries only, over [text, image] keys (text keys have no query
    projection), RMSNorm on q and on each stream's keys, rotary on the image rows, the text key padding mask."""
    hidden, text = kwargs["hidden_states"], kwargs["encoder_hidden_states"]
    heads = lambda t, n: t.unflatten(-1, (n, attn.heads, attn.head_dim)).permute(2, 0, 3, 1, 4)  # noqa: E731
    image_q, image_k, _ = heads(attn.img_qkv_proj(hidden), 3)
    text_k = attn.norm_added_k(heads(attn.txt_kv_proj(text), 2)[0])
    rotary = kwargs.get("image_rotary_emb")
    image_q, image_k = attn.norm_q(image_q), attn.norm_k(image_k)
    if rotary is not None:
        image_q, image_k = _prx_rope(image_q, rotary), _prx_rope(image_k, rotary)
    mask = kwargs.get("attention_mask")
    if mask is not None:
        mask = torch.cat([mask.bool(), torch.ones(hidden.shape[:2], dtype=torch.bool)], 1)[:, None, None]
    return _softmax(image_q, torch.cat([text_k, image_k], 2), attn.head_dim**-0.5, mask)


# --- tiny transformers and their inputs ----------------------------------------------------------------------------


def _cogview4():
    """Returns a tiny CogView4 transformer: 2 blocks, 2 heads of 8."""
    torch.manual_seed(0)
    return CogView4Transformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        text_embed_dim=16, time_embed_dim=16, condition_dim=8,
    ).eval()  # fmt: skip


def _cogview4_inputs(transformer):
    """Returns a CogView4 forward's kwargs: an 8×12 latent (4×6 tokens), 7 text tokens, SDXL-style size conditions."""
    g, c = torch.Generator().manual_seed(0), transformer.config
    sizes = torch.tensor([[64.0, 96.0], [64.0, 96.0]])
    return {
        "hidden_states": torch.randn(2, c.in_channels, 2 * ROWS_, 2 * COLS_, generator=g),
        "encoder_hidden_states": torch.randn(2, TEXT, c.text_embed_dim, generator=g),
        "timestep": torch.tensor([500.0, 250.0]),
        "original_size": sizes,
        "target_size": sizes,
        "crop_coords": torch.zeros(2, 2),
        "return_dict": False,
    }


def _lumina2():
    """Returns a tiny Lumina 2 transformer: 1 context and 1 noise refiner, 2 joint layers, 2 query heads of 16 over
    1 key/value head."""
    torch.manual_seed(0)
    return Lumina2Transformer2DModel(
        patch_size=2, in_channels=4, hidden_size=32, num_layers=2, num_refiner_layers=1, num_attention_heads=2,
        num_kv_heads=1, multiple_of=16, axes_dim_rope=(4, 6, 6), axes_lens=(32, 16, 16), cap_feat_dim=16,
    ).eval()  # fmt: skip


LUMINA2_VALID = 5  # valid caption tokens of each sample; the last two of the 7 are padding


def _lumina2_inputs(transformer):
    """Returns a Lumina 2 forward's kwargs: an 8×12 latent, 7 caption tokens of which the last 2 are padding (both
    samples alike, so the joint sequence is [5 caption tokens, 24 image tokens] with no mask)."""
    g, c = torch.Generator().manual_seed(0), transformer.config
    mask = torch.zeros(2, TEXT, dtype=torch.long)
    mask[:, :LUMINA2_VALID] = 1
    return {
        "hidden_states": torch.randn(2, c.in_channels, 2 * ROWS_, 2 * COLS_, generator=g),
        "timestep": torch.tensor([0.5, 0.25]),
        "encoder_hidden_states": torch.randn(2, TEXT, c.cap_feat_dim, generator=g),
        "encoder_attention_mask": mask,
        "return_dict": False,
    }


def _auraflow():
    """Returns a tiny AuraFlow transformer: 1 MMDiT block and 1 single block, 2 heads of 8, an 8×8 position table."""
    torch.manual_seed(0)
    return AuraFlowTransformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, num_mmdit_layers=1, num_single_dit_layers=1,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
        out_channels=4, pos_embed_max_size=64,
    ).eval()  # fmt: skip


def _auraflow_inputs(transformer):
    """Returns an AuraFlow forward's kwargs: an 8×12 latent and 7 text tokens (the transformer puts its 8 learned
    register tokens before them: 15 text keys)."""
    g, c = torch.Generator().manual_seed(0), transformer.config
    return {
        "hidden_states": torch.randn(2, c.in_channels, 2 * ROWS_, 2 * COLS_, generator=g),
        "encoder_hidden_states": torch.randn(2, TEXT, c.joint_attention_dim, generator=g),
        "timestep": torch.tensor([500.0, 250.0]),
        "return_dict": False,
    }


def _krea2():
    """Returns a tiny Krea 2 transformer: 2 blocks of 2 query heads of 8 over 1 key/value head, a text fusion of one
    layerwise and one refiner block over 2 tapped text layers."""
    torch.manual_seed(0)
    return Krea2Transformer2DModel(
        in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=32, timestep_embed_dim=16, text_hidden_dim=16, num_text_layers=2,
        text_num_attention_heads=2, text_num_key_value_heads=2, text_intermediate_size=32,
        num_layerwise_text_blocks=1, num_refiner_text_blocks=1, axes_dims_rope=(2, 2, 4),
    ).eval()  # fmt: skip


def _krea2_inputs(transformer):
    """Returns a Krea 2 forward's kwargs as its pipeline builds them: 24 packed image tokens, 7 text tokens (the
    second sample's last 2 masked), and (t, h, w) ids with text at the origin and image at (0, row, column)."""
    g, c = torch.Generator().manual_seed(0), transformer.config
    image_ids = torch.zeros(ROWS_, COLS_, 3)
    image_ids[..., 1] += torch.arange(ROWS_)[:, None]
    image_ids[..., 2] += torch.arange(COLS_)[None, :]
    mask = torch.ones(2, TEXT, dtype=torch.bool)
    mask[1, -2:] = False
    return {
        "hidden_states": torch.randn(2, ROWS_ * COLS_, c.in_channels, generator=g),
        "encoder_hidden_states": torch.randn(2, TEXT, c.num_text_layers, c.text_hidden_dim, generator=g),
        "timestep": torch.tensor([0.5, 0.25]),
        "position_ids": torch.cat([torch.zeros(TEXT, 3), image_ids.reshape(-1, 3)]),
        "encoder_attention_mask": mask,
        "return_dict": False,
    }


def _ideogram4():
    """Returns a tiny Ideogram 4 transformer: 2 blocks, 2 heads of 8, MRoPE sections (2, 1, 1)."""
    torch.manual_seed(0)
    return Ideogram4Transformer2DModel(
        in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=2, intermediate_size=32,
        adaln_dim=16, llm_features_dim=16, rope_theta=10_000, mrope_section=(2, 1, 1),
    ).eval()  # fmt: skip


def _ideogram4_inputs(transformer):
    """Returns an Ideogram 4 forward's kwargs in its pipeline's packed [left-pad][text][image] layout: 7 text slots
    (the second sample's first 2 are padding, segment −1), 24 image tokens at offset grid positions."""
    g, c = torch.Generator().manual_seed(0), transformer.config
    n_image, length = ROWS_ * COLS_, TEXT + ROWS_ * COLS_
    rows = torch.arange(ROWS_).repeat_interleave(COLS_)
    cols = torch.arange(COLS_).repeat(ROWS_)
    image_ids = torch.stack([torch.zeros_like(rows), rows, cols], 1) + IMAGE_POSITION_OFFSET
    position_ids = torch.zeros(2, length, 3, dtype=torch.long)
    segment_ids = torch.full((2, length), SEQUENCE_PADDING_INDICATOR)
    indicator = torch.zeros(2, length, dtype=torch.long)
    for b, n_text in enumerate((TEXT, TEXT - 2)):
        start = TEXT - n_text
        position_ids[b, start:TEXT] = torch.arange(n_text)[:, None]
        position_ids[b, TEXT:] = image_ids
        indicator[b, start:TEXT], indicator[b, TEXT:] = LLM_TOKEN_INDICATOR, OUTPUT_IMAGE_INDICATOR
        segment_ids[b, start:] = 1
    features = torch.randn(2, length, c.llm_features_dim, generator=g) * (indicator == LLM_TOKEN_INDICATOR)[..., None]
    latents = torch.randn(2, n_image, c.in_channels, generator=g)
    return {
        "hidden_states": torch.cat([torch.zeros(2, TEXT, c.in_channels), latents], 1),
        "timestep": torch.tensor([0.5, 0.25]),
        "encoder_hidden_states": features,
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        "indicator": indicator,
        "return_dict": False,
    }


def _prx():
    """Returns a tiny PRX transformer: 2 blocks, 2 heads of 8; its zero-initialised modulations (which would gate
    every attention output to 0) are drawn at random, seeded, so that the attention reaches the output."""
    torch.manual_seed(0)
    transformer = PRXTransformer2DModel(
        in_channels=4, patch_size=2, context_in_dim=16, hidden_size=16, mlp_ratio=2.0, num_heads=2, depth=2,
        axes_dim=[4, 4],
    )  # fmt: skip
    for block in transformer.blocks:
        torch.nn.init.normal_(block.modulation.lin.weight, std=0.2)
        torch.nn.init.normal_(block.modulation.lin.bias, std=0.2)
    return transformer.eval()


def _prx_inputs(transformer):
    """Returns a PRX forward's kwargs: an 8×12 latent, 7 text tokens (the second sample's last 2 masked)."""
    g, c = torch.Generator().manual_seed(0), transformer.config
    mask = torch.ones(2, TEXT, dtype=torch.bool)
    mask[1, -2:] = False
    return {
        "hidden_states": torch.randn(2, c.in_channels, 2 * ROWS_, 2 * COLS_, generator=g),
        "timestep": torch.tensor([0.5, 0.25]),
        "encoder_hidden_states": torch.randn(2, TEXT, c.context_in_dim, generator=g),
        "attention_mask": mask,
        "return_dict": False,
    }


GRID = (ROWS_, COLS_)
CASES = [
    Case("CogView4Transformer2DModel", _cogview4, _cogview4_inputs, _cogview4_naive, GRID, TEXT, False),
    Case("Lumina2Transformer2DModel", _lumina2, _lumina2_inputs, _lumina2_naive, GRID, LUMINA2_VALID, False),
    Case("AuraFlowTransformer2DModel", _auraflow, _auraflow_inputs, _auraflow_naive, GRID, 8 + TEXT, False),
    Case("Krea2Transformer2DModel", _krea2, _krea2_inputs, _krea2_naive, GRID, TEXT, False),
    Case("Ideogram4Transformer2DModel", _ideogram4, _ideogram4_inputs, _ideogram4_naive, GRID, TEXT, False),
    Case(
        "PRXTransformer2DModel", _prx, _prx_inputs, _prx_naive, GRID, TEXT, False, (0, 1), ("img_qkv_proj", "to_out.0")
    ),
]
