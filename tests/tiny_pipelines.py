"""Tiny random pipelines of the real diffusers/transformers classes (SD3, SD3.5-style, FLUX), built offline.

The tokenizers are real CLIP (byte-level BPE) and T5 (unigram) tokenizers over a small vocabulary, so that
sub-word splitting, special tokens and offsets behave as in the released models.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

WHOLE_WORDS = ["red", "blue", "circle", "square", "background", "and", "a", "photo", "of"]


def clip_tokenizer() -> CLIPTokenizer:
    """A CLIP BPE tokenizer: whole-word merges for WHOLE_WORDS, every other word split into characters."""
    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges = []
    for word in WHOLE_WORDS:
        current = word[0]
        for i, ch in enumerate(word[1:], start=1):
            piece = ch + ("</w>" if i == len(word) - 1 else "")
            if (current, piece) not in merges:
                merges.append((current, piece))
            current += piece
            vocab.setdefault(current, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def t5_tokenizer() -> T5TokenizerFast:
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -1.0) for w in WHOLE_WORDS if w != "background"] + [("▁back", -1.5), ("ground", -1.5)]
    vocab += [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz-'"]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)


def _clip_config(tokenizer: CLIPTokenizer, hidden: int, projection: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        projection_dim=projection,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _t5(tokenizer: T5TokenizerFast, d_model: int) -> T5EncoderModel:
    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=d_model,
            d_kv=8,
            d_ff=37,
            num_layers=1,
            num_heads=2,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
        )
    )


def _vae(latent_channels: int, shift: float | None) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=1.5,
        shift_factor=shift,
    )


def tiny_sd3_transformer(sd35: bool = False, num_layers: int = 3) -> SD3Transformer2DModel:
    """SD3 (or SD3.5-medium-style: rms qk-norm and dual attention in the first blocks) with the last block
    context_pre_only."""
    extra = {"qk_norm": "rms_norm", "dual_attention_layers": (0, 1)} if sd35 else {}
    return SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=num_layers,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=64,
        caption_projection_dim=16,
        pooled_projection_dim=64,
        pos_embed_max_size=16,
        **extra,
    )


def tiny_flux_transformer() -> FluxTransformer2DModel:
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=64,
        pooled_projection_dim=32,
        axes_dims_rope=(2, 2, 4),
    )


def _eval(pipe):
    """Freshly built modules are in training mode (T5 dropout); loaded ones are in eval mode."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


def tiny_sd3_pipeline(sd35: bool = False, seed: int = 0) -> StableDiffusion3Pipeline:
    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    t5_tok = t5_tokenizer()
    return _eval(
        StableDiffusion3Pipeline(
            transformer=tiny_sd3_transformer(sd35),
            vae=_vae(4, 0.1),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            text_encoder=CLIPTextModelWithProjection(_clip_config(tokenizer, 32, 32)),
            tokenizer=tokenizer,
            text_encoder_2=CLIPTextModelWithProjection(_clip_config(tokenizer, 32, 32)),
            tokenizer_2=clip_tokenizer(),
            text_encoder_3=_t5(t5_tok, 64),
            tokenizer_3=t5_tok,
        )
    )


def tiny_flux_pipeline(seed: int = 0) -> FluxPipeline:
    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    t5_tok = t5_tokenizer()
    return _eval(
        FluxPipeline(
            transformer=tiny_flux_transformer(),
            vae=_vae(4, 0.1),
            scheduler=FlowMatchEulerDiscreteScheduler(
                shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15
            ),
            text_encoder=CLIPTextModel(_clip_config(tokenizer, 32, 32)),
            tokenizer=tokenizer,
            text_encoder_2=_t5(t5_tok, 64),
            tokenizer_2=t5_tok,
        )
    )
