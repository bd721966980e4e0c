"""Tiny random Z-Image and Lumina-Image 2.0 pipelines of the real diffusers/transformers classes, offline.

The transformers are the tiny ones of tests/family_cases; the text encoders are the classes the pipelines' signatures
name, at 2 layers: Z-Image's Qwen3 (whose second-to-last hidden state is the caption) with a Qwen2 byte-level BPE
tokenizer and a Qwen3-style chat template, Lumina 2's Gemma 2 with a Gemma tokenizer (BPE over "▁"-joined text, no
pre-split) trained here on the pipeline's system prompt, so that every word of the prompts is one token.
"""

from __future__ import annotations

import json

import torch
from diffusers import AutoencoderKL, Lumina2Pipeline, Lumina2Transformer2DModel, ZImagePipeline
from family_cases.group_b import tiny_zimage
from family_cases.group_c import _lumina2
from tiny_family_pipelines import WORDS, _flow_match, qwen_tokenizer
from tiny_pipelines import _eval, _vae
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import Gemma2Config, Gemma2Model, GemmaTokenizer, Qwen2Tokenizer, Qwen3Config, Qwen3Model

# Qwen3's chat template, as far as a text-to-image prompt reaches it: one user message, the generation prompt, and
# `enable_thinking=False`'s empty think block (Z-Image passes enable_thinking=True: no think block)
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
QWEN3_TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"  # what the chat template gives Z-Image
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]  # Gemma's ids 0–4
LUMINA2_AXES_LENS = (64, 16, 16)  # group_c's (32, 16, 16) leaves no caption positions for the system prompt


def zimage_tokenizer() -> Qwen2Tokenizer:
    """Returns a Qwen2 tokenizer (byte-level BPE trained on Qwen3's chat template around WORDS) with Qwen3's chat
    template and think tokens, right padding."""
    tokenizer = qwen_tokenizer(QWEN3_TEMPLATE)
    tokenizer.add_tokens(["<think>", "</think>"])
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    tokenizer.padding_side = "right"
    return tokenizer


def gemma_tokenizer(system_prompt: str) -> GemmaTokenizer:
    """Returns a Gemma tokenizer (BPE with byte fallback over the text with spaces as "▁", BOS added) whose merges,
    trained on `system_prompt` + " <Prompt Start> " + WORDS split before each "▁", make every word one token and
    never join two words."""
    trainer_tokenizer = Tokenizer(BPE())
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    trainer = BpeTrainer(vocab_size=4096, special_tokens=GEMMA_SPECIALS, show_progress=False)
    trainer_tokenizer.train_from_iterator([f"{system_prompt} <Prompt Start> {WORDS}"], trainer)
    model = json.loads(trainer_tokenizer.to_str())["model"]
    vocab = dict(model["vocab"])
    for byte in range(256):  # byte fallback for characters the corpus lacks
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    return GemmaTokenizer(vocab=vocab, merges=[tuple(m) for m in model["merges"]], add_bos_token=True)


def tiny_zimage_pipeline(seed: int = 0) -> ZImagePipeline:
    """Returns a ZImagePipeline: group_b's Z-Image transformer (1 noise + 1 context refiner, 2 joint layers, 24-wide
    captions), a 2-layer Qwen3 model 24 wide, a 2-block AutoencoderKL (scale 2, 4 latent channels, scaling 1.5,
    shift 0.1) and a fixed-shift (3.0) flow-matching scheduler."""
    transformer = tiny_zimage()
    torch.manual_seed(seed)
    tokenizer = zimage_tokenizer()
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=24,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=12,
            max_position_embeddings=1024,
            bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    return _eval(ZImagePipeline(_flow_match(shift=3.0), _vae(4, 0.1), text_encoder, tokenizer, transformer))


def tiny_lumina2_transformer() -> Lumina2Transformer2DModel:
    """Returns group_c's Lumina 2 transformer (its weights) with a rotary table of LUMINA2_AXES_LENS: the caption
    takes positions 0 … n − 1 and the image n on the first axis, and Lumina 2's system prompt alone is ~30 tokens."""
    base = _lumina2()
    transformer = Lumina2Transformer2DModel.from_config({**base.config, "axes_lens": LUMINA2_AXES_LENS})
    transformer.load_state_dict(base.state_dict())
    return transformer.eval()


def tiny_lumina2_pipeline(seed: int = 0) -> Lumina2Pipeline:
    """Returns a Lumina2Pipeline: group_c's Lumina 2 transformer (1 context + 1 noise refiner, 2 joint layers,
    16-wide captions; rotary table LUMINA2_AXES_LENS), a 2-layer Gemma 2 model 16 wide, a 4-block AutoencoderKL
    (scale 8: Lumina's pipeline fixes vae_scale_factor = 8; 4 latent channels, scaling 1.5, shift 0.1) and a
    fixed-shift (6.0) flow-matching scheduler."""
    transformer = tiny_lumina2_transformer()
    torch.manual_seed(seed)
    system_prompt = Lumina2Pipeline(transformer, None, None, None, None).system_prompt  # set in __init__
    tokenizer = gemma_tokenizer(system_prompt)
    text_encoder = Gemma2Model(
        Gemma2Config(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            query_pre_attn_scalar=8,
            max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=1.5,
        shift_factor=0.1,
    )
    return _eval(Lumina2Pipeline(transformer, _flow_match(shift=6.0), vae, text_encoder, tokenizer))
