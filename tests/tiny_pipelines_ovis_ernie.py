"""Tiny random Ovis-Image and ERNIE-Image pipelines of the real diffusers/transformers classes, offline.

The transformers are the tiny ones of tests/family_cases (Ovis-Image: group_a, ERNIE-Image: group_b); the text
encoders are the classes each pipeline's signature names, at 2 layers. Ovis-Image's tokenizer is a Qwen2 tokenizer
over a byte-level BPE trained here on its system prompt and the prompts' words (every word one token), with Qwen3's
chat template (the part a single user message with `enable_thinking=False` uses). ERNIE-Image's is the Tekken-style
Mistral tokenizer of tests/tiny_family_pipelines with a BOS-prepending post-processor, as the released tokenizer.json
has (the pipeline tokenizes each prompt with `add_special_tokens=True`).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLFlux2, ErnieImagePipeline, OvisImagePipeline
from family_cases.group_a import tiny_ovis
from family_cases.group_b import tiny_ernie_image
from tiny_family_pipelines import WORDS, _flow_match, mistral_tokenizer, qwen_tokenizer
from tiny_pipelines import _eval, _vae
from tokenizers import processors
from transformers import Mistral3Config, Mistral3Model, Qwen3Config, Qwen3Model

# Qwen3's chat template, reduced to what OvisImagePipeline renders: user messages, then the generation prompt with
# the empty thinking block `enable_thinking=False` adds
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
OVIS_SYSTEM_PROMPT = OvisImagePipeline(None, None, None, None, None).system_prompt  # set in __init__


def ovis_tokenizer():
    """Returns a Qwen2 tokenizer with Qwen3's chat template and <think> tokens, over a BPE vocabulary trained on
    Ovis-Image's system prompt, the template's words and WORDS: every word one token, as in the released vocabulary
    (so "<|im_start|>user\\n" + the system prompt take 29 tokens, of which the pipeline drops 28)."""
    tokenizer = qwen_tokenizer("user\nassistant\n\n" + OVIS_SYSTEM_PROMPT + "{}")
    tokenizer.add_tokens(["<think>", "</think>"])  # added, not special, in Qwen3's tokenizer
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


def tiny_ovis_pipeline(seed: int = 0) -> OvisImagePipeline:
    """Returns an OvisImagePipeline: group_a's Ovis-Image transformer (1 double + 1 single block, 16-wide text), a
    2-layer Qwen3 model 16 wide, a 2-block AutoencoderKL (scale 2, 4 latent channels packed 2×2 into the
    transformer's 16) and FLUX.1's dynamic-shift scheduler (as Ovis-Image-7B's)."""
    transformer = tiny_ovis()
    torch.manual_seed(seed)
    tokenizer = ovis_tokenizer()
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=transformer.config.joint_attention_dim,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=512,
            bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    return _eval(
        OvisImagePipeline(
            scheduler=_flow_match(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15),
            vae=_vae(4, 0.1),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
        )
    )


def ernie_tokenizer():
    """Returns tiny_family_pipelines' Tekken-style Mistral tokenizer (trained on FLUX.2's system message and WORDS)
    whose post-processor prepends <s> when special tokens are added."""
    tokenizer = mistral_tokenizer()
    backend = tokenizer.backend_tokenizer
    bos = tokenizer.bos_token
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.bos_token_id)]
            ),
        ]
    )
    return tokenizer


def tiny_ernie_pipeline(seed: int = 0) -> ErnieImagePipeline:
    """Returns an ErnieImagePipeline: group_b's ERNIE-Image transformer (2 layers, patch 2, 4 input channels,
    24-wide text), a 2-layer Mistral 3 model 24 wide (the pipeline takes its second-to-last hidden state), a 2-block
    AutoencoderKLFlux2 with 1 latent channel (the pipeline's 2×2 patchify makes the transformer's 4; scale 2, so the
    pipeline's factor is 4) whose batch-norm statistics are drawn, and a fixed-shift scheduler (the pipeline passes
    its own σ, so no dynamic shift)."""
    transformer = tiny_ernie_image()
    torch.manual_seed(seed)
    tokenizer = ernie_tokenizer()
    text = {
        "model_type": "mistral",
        "vocab_size": len(tokenizer),
        "hidden_size": transformer.config.text_in_dim,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 12,
        "max_position_embeddings": 128,
        "sliding_window": None,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "model_type": "pixtral",
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 16,
        "patch_size": 4,
    }
    config = Mistral3Config(
        text_config=text, vision_config=vision, image_token_index=tokenizer.convert_tokens_to_ids("[IMG]")
    )
    vae = AutoencoderKLFlux2(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=transformer.config.in_channels // 4,
        norm_num_groups=8,
        sample_size=32,
    )
    vae.bn.running_mean.normal_(0.0, 0.5)
    vae.bn.running_var.uniform_(0.5, 2.0)
    return _eval(
        ErnieImagePipeline(
            transformer=transformer,
            vae=vae,
            text_encoder=Mistral3Model(config),
            tokenizer=tokenizer,
            scheduler=_flow_match(shift=3.0),
        )
    )


__all__ = ["WORDS", "ernie_tokenizer", "ovis_tokenizer", "tiny_ernie_pipeline", "tiny_ovis_pipeline"]
