"""Tiny random Bria 3.2 and LongCat-Image pipelines of the real diffusers/transformers classes, offline.

The transformers are group_a's tiny ones (LongCat-Image's with 64 input channels: its pipeline hard-codes 16 latent
channels, packed 2×2); the text encoders are the classes each pipeline's signature names, at 1–2 layers. Bria gets the
T5 unigram tokenizer of tests/tiny_pipelines; LongCat-Image a Qwen2 byte-level BPE trained on its template's and the
prompts' words (tests/tiny_family_pipelines), so that "a red cat on a mat" is whole-word tokens. LongCat-Image's
`text_processor` (a Qwen2VLProcessor in the release, used only by `rewire_prompt` to rewrite prompts with the text
encoder) is a copy of that tokenizer with a text-only Qwen2-VL chat template: transformers cannot build (nor load) a
Qwen2VLProcessor without torchvision, which this environment lacks, and the component may not be None (the pipeline's
`_optional_components` is empty, so `from_pretrained` refuses a saved None); for text the tokenizer is what the
processor runs.
"""

from __future__ import annotations

import copy

import torch
from diffusers import BriaPipeline, LongCatImagePipeline, LongCatImageTransformer2DModel
from family_cases.group_a import tiny_bria, tiny_longcat
from tiny_family_pipelines import _flow_match, qwen25_vl, qwen_tokenizer
from tiny_pipelines import _eval, _t5, _vae, t5_tokenizer

# Qwen2-VL's chat template, text blocks only (the default system message when none is given)
QWEN_VL_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for block in message['content'] %}{% if block['type'] == 'text' %}{{ block['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_bria_pipeline(seed: int = 0) -> BriaPipeline:
    """Returns a BriaPipeline: group_a's Bria 3.2 transformer (1 double + 1 single block, 16 input channels), a
    1-layer T5 encoder 16 wide with tiny_pipelines' T5 tokenizer, a 2-block AutoencoderKL (scale 2, 4 latent
    channels packed 2×2, no shift factor: the pipeline sets it to 0) and a fixed-shift flow-matching scheduler (the
    pipeline then samples the training sigmas, `get_original_sigmas`)."""
    transformer = tiny_bria()
    torch.manual_seed(seed)
    tokenizer = t5_tokenizer()
    return _eval(
        BriaPipeline(
            transformer=transformer,
            scheduler=_flow_match(shift=3.0),
            vae=_vae(4, None),
            text_encoder=_t5(tokenizer, 16),
            tokenizer=tokenizer,
        )
    )


def tiny_longcat_transformer() -> LongCatImageTransformer2DModel:
    """Returns group_a's 1 double + 1 single block LongCat-Image transformer with 64 input channels (16 latent
    channels × 2×2, as LongCatImagePipeline packs them), seeded, fp32, eval mode."""
    torch.manual_seed(0)
    config = dict(tiny_longcat().config) | {"in_channels": 64}
    return LongCatImageTransformer2DModel.from_config(config).float().eval()


def tiny_longcat_pipeline(seed: int = 0) -> LongCatImagePipeline:
    """Returns a LongCatImagePipeline: a 64-input-channel tiny LongCat-Image transformer, a 2-layer Qwen2.5-VL 16
    wide (the transformer's text width), a 2-block AutoencoderKL (scale 2, 16 latent channels, FLUX-style shift) and
    FLUX.1's dynamic-shift scheduler; its text_processor is the tokenizer's copy (see the module docstring)."""
    transformer = tiny_longcat_transformer()
    torch.manual_seed(seed)
    vae = _vae(16, 0.1)
    scheduler = _flow_match(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    probe = LongCatImagePipeline(scheduler, vae, None, None, None, transformer)  # the template is set in __init__
    tokenizer = qwen_tokenizer(probe.prompt_template_encode_prefix + "{}" + probe.prompt_template_encode_suffix)
    text_encoder = qwen25_vl(tokenizer, 16, mrope=(2, 1, 1))
    text_processor = copy.deepcopy(tokenizer)
    text_processor.chat_template = QWEN_VL_CHAT_TEMPLATE
    return _eval(LongCatImagePipeline(scheduler, vae, text_encoder, tokenizer, text_processor, transformer))
