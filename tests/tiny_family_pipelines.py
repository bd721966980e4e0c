"""Tiny random FLUX.2, Qwen-Image, Chroma and AuraFlow pipelines of the real diffusers/transformers classes, offline.

The transformers are the tiny ones of tests/family_cases; the text encoders are the classes each pipeline's signature
names, at 1–2 layers. FLUX.2's (Mistral Tekken-style) and Qwen-Image's (Qwen2) tokenizers are byte-level BPEs trained
here on the templates' and prompts' words, so that the chat templates tokenize as the released tokenizers do: in
particular Qwen-Image's system prefix takes exactly the 34 tokens the pipeline drops. Chroma and AuraFlow get the T5
unigram tokenizer of tests/tiny_pipelines.
"""

from __future__ import annotations

import json

import torch
from diffusers import (
    AuraFlowPipeline,
    AutoencoderKLFlux2,
    AutoencoderKLQwenImage,
    ChromaPipeline,
    FlowMatchEulerDiscreteScheduler,
    Flux2Pipeline,
    QwenImagePipeline,
)
from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
from family_cases.group_a import tiny_chroma, tiny_flux2
from family_cases.group_b import tiny_qwenimage
from family_cases.group_c import _auraflow
from tiny_pipelines import _eval, _t5, _vae, t5_tokenizer
from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import (
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    UMT5Config,
    UMT5EncoderModel,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

WORDS = "a red blue cat dog on a mat rug photo of"  # whole words of both BPE vocabularies, beside the templates'

# Mistral's Tekken pre-tokenizer pattern (mistral-common); tokens are byte-level BPE pieces of each split
TEKKEN_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
MISTRAL_SPECIALS = [
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
    "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
]  # fmt: skip
# Mistral-Small-3.1's chat template, less its default system message (FLUX.2 always passes its own): a system
# message's content may be a string or a list of text blocks, as FLUX.2's `format_input` writes it
MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- if messages[0]['content'] is string %}{%- set system_message = messages[0]['content'] %}"
    "{%- else %}{%- set system_message = messages[0]['content'][0]['text'] %}{%- endif %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}"
    "{%- for message in loop_messages %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if message['content'] is string %}{{- '[INST]' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST]' }}{%- for block in message['content'] %}"
    "{%- if block['type'] == 'text' %}{{- block['text'] }}{%- else %}{{- '[IMG]' }}{%- endif %}"
    "{%- endfor %}{{- '[/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{- message['content'] + eos_token }}{%- endif %}"
    "{%- endfor %}"
)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
FLUX2_TEXT_LAYERS = (1, 2)  # the tiny Mistral's hidden states FLUX.2 stacks (the released model: (10, 20, 30) of 40)


def _byte_level_bpe(pattern: str, corpus: list[str], specials: list[str]) -> Tokenizer:
    """Returns a byte-level BPE `tokenizers.Tokenizer` trained on `corpus` until every word of it is one token:
    the regex split `pattern`, then bytes to unicode; `specials` first in the vocabulary."""
    tokenizer = Tokenizer(BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=4096,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


def mistral_tokenizer() -> PreTrainedTokenizerFast:
    """Returns a Tekken-style Mistral tokenizer (byte-level BPE, Mistral's special tokens and chat template), right
    padding with <pad>, trained on FLUX.2's system message and WORDS."""
    tokenizer = _byte_level_bpe(TEKKEN_PATTERN, [SYSTEM_MESSAGE, WORDS], MISTRAL_SPECIALS)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)  # as transformers' Tekken converter
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        chat_template=MISTRAL_CHAT_TEMPLATE,
    )


def qwen_tokenizer(template: str) -> Qwen2Tokenizer:
    """Returns a Qwen2 tokenizer (Qwen2's pre-tokenizer and special tokens) over a BPE vocabulary trained on
    `template` and WORDS."""
    bpe = _byte_level_bpe(PRETOKENIZE_REGEX, [template.format(WORDS)], QWEN_SPECIALS)
    model = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]])
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS[1:]})
    return tokenizer


def qwen25_vl(tokenizer, hidden: int, layers: int = 2, mrope: tuple[int, ...] = (2, 2, 2), **text):
    """Returns a tiny Qwen2.5-VL (`layers` text layers `hidden` wide, `mrope` its rotary sections, `text` more text
    config) over `tokenizer`'s vocabulary and Qwen's special tokens, with a one-block vision tower."""
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 32,
            "num_hidden_layers": layers,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "rope_parameters": {"rope_type": "default", "mrope_section": list(mrope), "rope_theta": 1e6},
            "bos_token_id": ids("<|endoftext|>"),
            "eos_token_id": ids("<|im_end|>"),
            **text,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 8,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": hidden,
        },
        image_token_id=ids("<|image_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def _flow_match(**config) -> FlowMatchEulerDiscreteScheduler:
    """Returns a flow-matching Euler scheduler over 1000 training timesteps with `config`."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **config)


def tiny_flux2_pipeline(seed: int = 0) -> Flux2Pipeline:
    """Returns a Flux2Pipeline: group_a's FLUX.2 transformer (1 double + 1 single block), a 2-layer Mistral 3 whose
    FLUX2_TEXT_LAYERS hidden states (8 wide) stack to the transformer's 16-wide text, a 2-block AutoencoderKLFlux2
    (scale 2, 4 latent channels patchified 2×2 into the transformer's 16) and the dynamic-shift scheduler."""
    tokenizer = mistral_tokenizer()
    text = {
        "model_type": "mistral",
        "vocab_size": len(tokenizer),
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
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
    transformer = tiny_flux2()
    torch.manual_seed(seed)
    return _eval(
        Flux2Pipeline(
            scheduler=_flow_match(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15),
            vae=AutoencoderKLFlux2(
                down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2,
                block_out_channels=(8, 16),
                layers_per_block=1,
                latent_channels=4,
                norm_num_groups=8,
                sample_size=32,
            ),
            text_encoder=Mistral3ForConditionalGeneration(config),
            tokenizer=tokenizer,
            transformer=transformer,
        )
    )


def tiny_qwenimage_pipeline(seed: int = 0) -> QwenImagePipeline:
    """Returns a QwenImagePipeline: group_b's Qwen-Image transformer (2 blocks, 24-wide text), a 2-layer
    Qwen2.5-VL text model 24 wide, an AutoencoderKLQwenImage (spatial scale 4, 4 latent channels packed 2×2) and
    Qwen-Image's dynamic-shift scheduler."""
    transformer = tiny_qwenimage().float().eval()
    torch.manual_seed(seed)
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    scheduler = _flow_match(
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=0.9,
        base_image_seq_len=256,
        max_image_seq_len=8192,
        shift_terminal=0.02,
        time_shift_type="exponential",
    )
    template = QwenImagePipeline(scheduler, vae, None, None, transformer).prompt_template_encode  # set in __init__
    tokenizer = qwen_tokenizer(template)
    text_encoder = qwen25_vl(tokenizer, 24)
    return _eval(QwenImagePipeline(scheduler, vae, text_encoder, tokenizer, transformer))


def tiny_chroma_pipeline(seed: int = 0) -> ChromaPipeline:
    """Returns a ChromaPipeline: group_a's Chroma transformer (1 double + 1 single block), a 1-layer T5 encoder 16
    wide with tiny_pipelines' T5 tokenizer, a 2-block AutoencoderKL (scale 2, 4 latent channels packed 2×2) and
    FLUX.1's dynamic-shift scheduler."""
    transformer = tiny_chroma()
    torch.manual_seed(seed)
    tokenizer = t5_tokenizer()
    return _eval(
        ChromaPipeline(
            scheduler=_flow_match(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15),
            vae=_vae(4, 0.1),
            text_encoder=_t5(tokenizer, 16),
            tokenizer=tokenizer,
            transformer=transformer,
        )
    )


def tiny_auraflow_pipeline(seed: int = 0) -> AuraFlowPipeline:
    """Returns an AuraFlowPipeline: group_c's AuraFlow transformer (1 MMDiT + 1 single block, 8 register tokens, an
    8×8 position table), a 1-layer UMT5 encoder 16 wide with tiny_pipelines' T5 tokenizer, a 2-block AutoencoderKL
    (scale 2, 4 latent channels) and AuraFlow's fixed-shift scheduler."""
    transformer = _auraflow()
    torch.manual_seed(seed)
    tokenizer = t5_tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=16,
            d_kv=8,
            d_ff=37,
            num_layers=1,
            num_heads=2,
            relative_attention_num_buckets=8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    return _eval(
        AuraFlowPipeline(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=_vae(4, None),
            transformer=transformer,
            scheduler=_flow_match(shift=1.73),
        )
    )
