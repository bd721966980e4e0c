"""Qwen-Image, HunyuanImage-2.1, GLM-Image, ERNIE-Image, NucleusMoE-Image and Z-Image.

The naive references redo each stock processor's q/k formation in plain
torch (projections, per-head norms, rotary embedding, the mask the module receives) in the order the processor
concatenates tokens, and take the full softmax.

Qwen-Image 2.1 (`QwenImage21Transformer2DModel`) has no row: its block-causal prefill makes one attention call per
text segment (text queries over text keys only, causal) and then one for the target image's queries, so a module's
first call holds no image tokens and text never attends to the image.
"""

from __future__ import annotations

import math

import torch
from diffusers import (
    ErnieImageTransformer2DModel,
    GlmImageTransformer2DModel,
    HunyuanImageTransformer2DModel,
    NucleusMoEImageTransformer2DModel,
    QwenImageTransformer2DModel,
    ZImageTransformer2DModel,
)
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen
from diffusers.models.transformers.transformer_z_image import SEQ_MULTI_OF

from family_cases import Case

TEXT = 7  # text tokens of every case
ROWS_, COLS_ = 4, 6  # the image token grid (non-square on purpose); Z-Image's is 4 × 8, see `zimage_grid`


def _argument(args: tuple, kwargs: dict, name: str, position: int, default=None):
    """Returns a call's argument `name` (keyword, else the positional one at `position`, else `default`)."""
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else default


# ---- naive references ------------------------------------------------------------------------------------------


def _softmax(query: torch.Tensor, key: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Returns softmax(q·kᵀ/√d + bias) in fp32, (batch, head, query, key), from (batch, token, head, dim) q and k;
    `bias` is additive and broadcasts to (batch, head, query, key)."""
    query, key = query.transpose(1, 2).float(), key.transpose(1, 2).float()
    logits = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
    if bias is not None:
        logits = logits + bias.float()
    return torch.softmax(logits, dim=-1)


def _key_bias(keep: torch.Tensor | None) -> torch.Tensor | None:
    """Returns the (batch, 1, 1, key) additive bias of a boolean (batch, key) keep mask: 0 kept, −inf masked."""
    if keep is None:
        return None
    return torch.zeros(keep.shape, dtype=torch.float32).masked_fill(~keep.bool(), float("-inf"))[:, None, None, :]


def _qwen_naive(attn, args, kwargs) -> torch.Tensor:
    """Returns Qwen-Image's joint probabilities, order [text, image] (QwenDoubleStreamAttnProcessor2_0)."""
    image, text = kwargs["hidden_states"], kwargs["encoder_hidden_states"]
    head_dim = attn.inner_dim // attn.heads
    q = attn.norm_q(attn.to_q(image).unflatten(-1, (-1, head_dim)))
    k = attn.norm_k(attn.to_k(image).unflatten(-1, (-1, head_dim)))
    tq = attn.norm_added_q(attn.add_q_proj(text).unflatten(-1, (-1, head_dim)))
    tk = attn.norm_added_k(attn.add_k_proj(text).unflatten(-1, (-1, head_dim)))
    image_freqs, text_freqs = kwargs["image_rotary_emb"]
    q, k = (apply_rotary_emb_qwen(x, image_freqs, use_real=False) for x in (q, k))
    tq, tk = (apply_rotary_emb_qwen(x, text_freqs, use_real=False) for x in (tq, tk))
    text_mask = kwargs.get("encoder_hidden_states_mask")
    keep = None
    if text_mask is not None:
        keep = torch.cat([text_mask.bool(), torch.ones(image.shape[:2], dtype=torch.bool)], dim=1)
    return _softmax(torch.cat([tq, q], 1), torch.cat([tk, k], 1), _key_bias(keep))


def _hunyuan_naive(attn, args, kwargs) -> torch.Tensor:
    """Returns HunyuanImage-2.1's joint probabilities, order [image, text] (HunyuanImageAttnProcessor): a double
    block projects the text with add_*_proj, a single block projects the joint sequence with to_*; the rotary
    embedding is applied to the image tokens only."""
    image, text = kwargs["hidden_states"], kwargs["encoder_hidden_states"]
    n_image, rotary = image.shape[1], kwargs["image_rotary_emb"]

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(2, (attn.heads, -1))

    joint = image if attn.add_q_proj is not None else torch.cat([image, text], dim=1)
    q, k = attn.norm_q(heads(attn.to_q(joint))), attn.norm_k(heads(attn.to_k(joint)))
    q = torch.cat([apply_rotary_emb(q[:, :n_image], rotary, sequence_dim=1), q[:, n_image:]], dim=1)
    k = torch.cat([apply_rotary_emb(k[:, :n_image], rotary, sequence_dim=1), k[:, n_image:]], dim=1)
    if attn.add_q_proj is not None:
        q = torch.cat([q, attn.norm_added_q(heads(attn.add_q_proj(text)))], dim=1)
        k = torch.cat([k, attn.norm_added_k(heads(attn.add_k_proj(text)))], dim=1)
    mask = kwargs["attention_mask"]  # (batch, 1, 1, key) boolean, built by the transformer
    return _softmax(q, k, _key_bias(mask[:, 0, 0]))


def _glm_naive(attn, args, kwargs) -> torch.Tensor:
    """Returns GLM-Image's joint probabilities, order [text, image] (GlmImageAttnProcessor: one projection of the
    joint sequence, rotary embedding (unbind dim −2) on the image tokens). A text mask becomes the processor's
    float (batch, 1, query, key) matrix of 1.0 / 0.0, which SDPA adds to the logits."""
    image, text = kwargs["hidden_states"], kwargs["encoder_hidden_states"]
    if kwargs.get("kv_cache") is not None:
        raise NotImplementedError("the naive GLM-Image reference does not read a KV cache")
    n_text = text.shape[1]
    joint = torch.cat([text, image], dim=1)
    q = attn.norm_q(attn.to_q(joint).unflatten(2, (attn.heads, -1)))
    k = attn.norm_k(attn.to_k(joint).unflatten(2, (attn.heads, -1)))
    rotary = kwargs["image_rotary_emb"]
    q = torch.cat(
        [q[:, :n_text], apply_rotary_emb(q[:, n_text:], rotary, sequence_dim=1, use_real_unbind_dim=-2)], dim=1
    )
    k = torch.cat(
        [k[:, :n_text], apply_rotary_emb(k[:, n_text:], rotary, sequence_dim=1, use_real_unbind_dim=-2)], dim=1
    )
    bias, text_mask = None, kwargs.get("attention_mask")
    if text_mask is not None:
        valid = torch.cat([text_mask.float(), torch.ones(image.shape[:2])], dim=1)
        bias = (valid[:, :, None] * valid[:, None, :] > 0).float()[:, None]
    return _softmax(q, k, bias)


def _rotate_half(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Returns x (batch, token, head, dim) rotated by `angles` (batch, token, 1, rot) the non-interleaved way
    (x·cos + [−x₂, x₁]·sin over the first `rot` channels), as ERNIE-Image's processor does."""
    rot = angles.shape[-1]
    x, rest = x[..., :rot], x[..., rot:]
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    return torch.cat([x * torch.cos(angles) + rotated * torch.sin(angles), rest], dim=-1)


def _ernie_naive(attn, args, kwargs) -> torch.Tensor:
    """Returns ERNIE-Image's joint probabilities, order [image, text] (ErnieImageSingleStreamAttnProcessor), with
    the (batch, 1, 1, key) boolean mask of the padded text the transformer always builds."""
    hidden = _argument(args, kwargs, "hidden_states", 0)
    q = attn.norm_q(attn.to_q(hidden).unflatten(-1, (attn.heads, -1)))
    k = attn.norm_k(attn.to_k(hidden).unflatten(-1, (attn.heads, -1)))
    angles = kwargs["image_rotary_emb"]
    mask = kwargs["attention_mask"]
    return _softmax(_rotate_half(q, angles), _rotate_half(k, angles), _key_bias(mask.reshape(mask.shape[0], -1)))


def _nucleus_naive(attn, args, kwargs) -> torch.Tensor:
    """Returns NucleusMoE-Image's probabilities (batch, head, image query, key), keys [image, text]: only the image
    tokens query (NucleusMoEAttnProcessor2_0); text keys get the text rotary embedding; grouped key heads are
    repeated to the query heads."""
    image, text = kwargs["hidden_states"], kwargs.get("encoder_hidden_states")
    head_dim = attn.inner_dim // attn.heads
    kv_heads = attn.inner_kv_dim // head_dim
    image_freqs, text_freqs = kwargs["image_rotary_emb"]
    q = apply_rotary_emb_qwen(attn.norm_q(attn.to_q(image).unflatten(-1, (attn.heads, -1))), image_freqs, False)
    k = apply_rotary_emb_qwen(attn.norm_k(attn.to_k(image).unflatten(-1, (kv_heads, -1))), image_freqs, False)
    if kwargs.get("cached_txt_key") is not None:
        tk = kwargs["cached_txt_key"]
    else:
        tk = attn.norm_added_k(attn.add_k_proj(text).unflatten(-1, (kv_heads, -1)))
        tk = apply_rotary_emb_qwen(tk, text_freqs, use_real=False)
    k = torch.cat([k, tk], dim=1).repeat_interleave(attn.heads // kv_heads, dim=2)
    return _softmax(q, k, _key_bias(kwargs.get("attention_mask")))


def _zimage_naive(attn, args, kwargs) -> torch.Tensor:
    """Returns Z-Image's joint probabilities, order [image, caption] (ZSingleStreamAttnProcessor: complex rotary
    over interleaved channel pairs), with the (batch, key) mask of batch padding when there is one."""
    hidden = _argument(args, kwargs, "hidden_states", 0)
    q = attn.norm_q(attn.to_q(hidden).unflatten(-1, (attn.heads, -1)))
    k = attn.norm_k(attn.to_k(hidden).unflatten(-1, (attn.heads, -1)))
    freqs = kwargs["freqs_cis"].unsqueeze(2)

    def rotate(x: torch.Tensor) -> torch.Tensor:
        return torch.view_as_real(torch.view_as_complex(x.float().unflatten(-1, (-1, 2))) * freqs).flatten(3)

    return _softmax(rotate(q), rotate(k), _key_bias(kwargs.get("attention_mask")))


# ---- tiny transformers and their inputs --------------------------------------------------------------------------


def _seeded(build):
    """Returns a builder that seeds torch (0), builds, and returns the transformer in fp32 eval mode."""

    def seeded() -> torch.nn.Module:
        torch.manual_seed(0)
        return build().float().eval()

    seeded.__doc__ = build.__doc__
    return seeded


def _randomise(*modules: torch.nn.Module) -> None:
    """Re-draws the weights of `modules` from N(0, 0.1²): zero-initialised ones (so that their gates and outputs
    matter) or uninitialised ones."""
    for module in modules:
        for parameter in module.parameters():
            torch.nn.init.normal_(parameter, std=0.1)


@_seeded
def tiny_qwenimage() -> QwenImageTransformer2DModel:
    """A 2-block Qwen-Image transformer, width 32 (2 heads × 16), rotary axes (4, 6, 6)."""
    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=24,
        axes_dims_rope=(4, 6, 6),
    )


def _qwen_inputs(transformer) -> dict:
    """Returns a Qwen-Image forward's kwargs: packed 4 × 6 latents, 7 text tokens, no text mask (the pipeline drops
    an all-ones one)."""
    g, c = torch.Generator().manual_seed(0), transformer.config
    return {
        "hidden_states": torch.randn(2, ROWS_ * COLS_, c.in_channels, generator=g),
        "encoder_hidden_states": torch.randn(2, TEXT, c.joint_attention_dim, generator=g),
        "timestep": torch.tensor([0.5, 0.25]),
        "img_shapes": [[(1, ROWS_, COLS_)]] * 2,
        "return_dict": False,
    }


@_seeded
def tiny_hunyuanimage() -> HunyuanImageTransformer2DModel:
    """A HunyuanImage-2.1 transformer with 1 double and 1 single block (and 1 token-refiner block), width 32."""
    return HunyuanImageTransformer2DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        patch_size=(2, 2),
        text_embed_dim=24,
        rope_axes_dim=(8, 8),
    )


def _hunyuan_inputs(transformer) -> dict:
    """Returns a HunyuanImage-2.1 forward's kwargs: an 8 × 12 latent (4 × 6 tokens), 7 text tokens of which the
    second sample's last 2 are padding (the transformer always takes a text mask)."""
    g, c = torch.Generator().manual_seed(0), transformer.config
    mask = torch.ones(2, TEXT, dtype=torch.long)
    mask[1, -2:] = 0
    return {
        "hidden_states": torch.randn(2, c.in_channels, 2 * ROWS_, 2 * COLS_, generator=g),
        "timestep": torch.tensor([500.0, 250.0]),
        "encoder_hidden_states": torch.randn(2, TEXT, c.text_embed_dim, generator=g),
        "encoder_attention_mask": mask,
        "return_dict": False,
    }


@_seeded
def tiny_glm_image() -> GlmImageTransformer2DModel:
    """A 2-block GLM-Image transformer, width 32 (2 heads × 16)."""
    return GlmImageTransformer2DModel(
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        text_embed_dim=24,
        time_embed_dim=32,
        condition_dim=16,
        prior_vq_quantizer_codebook_size=64,
    )


def _glm_inputs(transformer) -> dict:
    """Returns a GLM-Image forward's kwargs: an 8 × 12 latent (4 × 6 tokens) with its prior tokens, 7 glyph tokens,
    no mask (the pipeline passes none)."""
    g, c = torch.Generator().manual_seed(0), transformer.config
    return {
        "hidden_states": torch.randn(2, c.in_channels, 2 * ROWS_, 2 * COLS_, generator=g),
        "encoder_hidden_states": torch.randn(2, TEXT, c.text_embed_dim, generator=g),
        "prior_token_id": torch.randint(0, c.prior_vq_quantizer_codebook_size, (2, ROWS_ * COLS_), generator=g),
        "prior_token_drop": torch.tensor([[False], [True]]).expand(2, ROWS_ * COLS_),
        "timestep": torch.tensor([500.0, 250.0]),
        "target_size": torch.tensor([[64.0, 96.0]] * 2),
        "crop_coords": torch.zeros(2, 2),
        "return_dict": False,
    }


@_seeded
def tiny_ernie_image() -> ErnieImageTransformer2DModel:
    """A 2-layer ERNIE-Image transformer, width 32 (2 heads × 16), patch 2, its zero-initialised modulation and
    output projection re-drawn."""
    transformer = ErnieImageTransformer2DModel(
        hidden_size=32,
        num_attention_heads=2,
        num_layers=2,
        ffn_hidden_size=64,
        in_channels=4,
        out_channels=4,
        patch_size=2,
        text_in_dim=24,
        rope_axes_dim=(4, 6, 6),
    )
    _randomise(transformer.adaLN_modulation, transformer.final_linear)
    return transformer


def _ernie_inputs(transformer) -> dict:
    """Returns an ERNIE-Image forward's kwargs: an 8 × 12 latent (4 × 6 tokens), 7 padded text slots of which the
    second sample uses 5 (`text_lens`; the transformer always masks the padding)."""
    g, c = torch.Generator().manual_seed(0), transformer.config
    text = torch.randn(2, TEXT, c.text_in_dim, generator=g)
    text[1, 5:] = 0.0  # the pipeline pads with zeros
    return {
        "hidden_states": torch.randn(2, c.in_channels, 2 * ROWS_, 2 * COLS_, generator=g),
        "timestep": torch.tensor([500.0, 250.0]),
        "text_bth": text,
        "text_lens": torch.tensor([TEXT, 5]),
        "return_dict": False,
    }


@_seeded
def tiny_nucleusmoe_image() -> NucleusMoEImageTransformer2DModel:
    """A NucleusMoE-Image transformer with a dense block then a mixture-of-experts block (4 experts), width 32
    (2 query heads × 16, 1 key/value head), its experts' weights (left uninitialised by the class) drawn."""
    transformer = NucleusMoEImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        num_key_value_heads=1,
        joint_attention_dim=24,
        axes_dims_rope=(4, 6, 6),
        mlp_ratio=6.0,
        dense_moe_strategy="leave_first_block_dense",
        num_experts=4,
        moe_intermediate_dim=16,
        capacity_factors=2.0,
    )
    _randomise(*(block.img_mlp.experts for block in transformer.transformer_blocks if block.moe_enabled))
    return transformer


def _nucleus_inputs(transformer) -> dict:
    """Returns a NucleusMoE-Image forward's kwargs: packed 4 × 6 latents, 7 text tokens, no mask (the pipeline
    drops an all-ones one)."""
    g, c = torch.Generator().manual_seed(0), transformer.config
    return {
        "hidden_states": torch.randn(2, ROWS_ * COLS_, c.in_channels, generator=g),
        "img_shapes": [(1, ROWS_, COLS_)] * 2,
        "encoder_hidden_states": torch.randn(2, TEXT, c.joint_attention_dim, generator=g),
        "timestep": torch.tensor([0.5, 0.25]),
        "return_dict": False,
    }


@_seeded
def tiny_zimage() -> ZImageTransformer2DModel:
    """A 2-layer Z-Image transformer (1 noise- and 1 context-refiner layer), width 32 (2 heads × 16)."""
    return ZImageTransformer2DModel(
        in_channels=4,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=24,
        axes_dims=[4, 6, 6],
        axes_lens=[128, 32, 32],
    )


Z_ROWS, Z_COLS = 4, 8  # 32 image tokens: a multiple of SEQ_MULTI_OF, so no padding sits inside the sequence
Z_TEXT = SEQ_MULTI_OF  # the 7 caption tokens are padded (with the learned cap_pad_token, attended) to 32


def _zimage_inputs(transformer) -> dict:
    """Returns a Z-Image forward's kwargs: per-sample (C, 1, 8, 16) latents (4 × 8 tokens) and 7-token captions."""
    g, c = torch.Generator().manual_seed(0), transformer.config
    return {
        "x": [torch.randn(c.in_channels, 1, 2 * Z_ROWS, 2 * Z_COLS, generator=g) for _ in range(2)],
        "t": torch.tensor([0.5, 0.25]),
        "cap_feats": [torch.randn(TEXT, c.cap_feat_dim, generator=g) for _ in range(2)],
        "return_dict": False,
    }


CASES = [
    Case("QwenImageTransformer2DModel", tiny_qwenimage, _qwen_inputs, _qwen_naive, (ROWS_, COLS_), TEXT, False),
    Case(
        "HunyuanImageTransformer2DModel", tiny_hunyuanimage, _hunyuan_inputs, _hunyuan_naive, (ROWS_, COLS_), TEXT, True
    ),
    Case("GlmImageTransformer2DModel", tiny_glm_image, _glm_inputs, _glm_naive, (ROWS_, COLS_), TEXT, False),
    Case("ErnieImageTransformer2DModel", tiny_ernie_image, _ernie_inputs, _ernie_naive, (ROWS_, COLS_), TEXT, True),
    Case(
        "NucleusMoEImageTransformer2DModel",
        tiny_nucleusmoe_image,
        _nucleus_inputs,
        _nucleus_naive,
        (ROWS_, COLS_),
        TEXT,
        True,
        queries_only=(0, 1),
    ),
    Case("ZImageTransformer2DModel", tiny_zimage, _zimage_inputs, _zimage_naive, (Z_ROWS, Z_COLS), Z_TEXT, True),
]
