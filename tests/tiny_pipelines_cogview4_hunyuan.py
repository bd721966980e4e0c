"""Tiny random CogView4 and HunyuanImage-2.1 pipelines of the real diffusers/transformers classes, offline.

The transformers are the tiny ones of tests/family_cases (HunyuanImage's given the ByT5 glyph projection the released
model has); the text encoders are the classes each pipeline's signature names, at 2–3 layers. CogView4's GLM-4
tokenizer is a byte-level BPE trained here on WORDS with GLM-4's special tokens, its "[gMASK] <sop>" prefix and its
left padding; HunyuanImage's Qwen2 tokenizer is tiny_family_pipelines' over its own template (whose system prefix
takes the 34 tokens the pipeline drops), and its glyph tokenizer is the real (vocabulary-free) ByT5 one.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLHunyuanImage,
    CogView4Pipeline,
    HunyuanImagePipeline,
    HunyuanImageTransformer2DModel,
)
from family_cases.group_b import tiny_hunyuanimage
from family_cases.group_c import _cogview4
from tiny_family_pipelines import WORDS, _byte_level_bpe, _flow_match, qwen25_vl, qwen_tokenizer
from tiny_pipelines import _eval
from tokenizers import processors
from transformers import (
    ByT5Tokenizer,
    GlmConfig,
    GlmModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

# GLM-4's pre-tokenizer split (tokenizer.json of THUDM/glm-4-9b-hf and CogView4-6B): tiktoken's cl100k pattern
GLM4_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
GLM4_SPECIALS = [
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>",
    "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
]  # fmt: skip
HUNYUAN_GLYPH_LENGTH = 128  # HunyuanImagePipeline.tokenizer_2_max_length (fixed in its __init__)


def glm4_tokenizer() -> PreTrainedTokenizerFast:
    """Returns a GLM-4 tokenizer (byte-level BPE over WORDS, GLM-4's special tokens, "[gMASK] <sop>" before every
    text, left padding with <|endoftext|>), as CogView4's."""
    tokenizer = _byte_level_bpe(GLM4_PATTERN, [WORDS], GLM4_SPECIALS)
    ids = {token: tokenizer.token_to_id(token) for token in ("[gMASK]", "<sop>")}
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="[gMASK]:0 <sop>:0 $A:0",
                pair="[gMASK]:0 <sop>:0 $A:0 $B:1",
                special_tokens=list(ids.items()),
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=128000,
    )


def tiny_cogview4_pipeline(seed: int = 0) -> CogView4Pipeline:
    """Returns a CogView4Pipeline: group_c's CogView4 transformer (2 blocks, 16-wide text), a 2-layer GlmModel 16 wide
    (the pipeline takes its second-to-last hidden states), a 3-block AutoencoderKL (scale 4, so that a 2 × 2-token
    image is 16 px, the pipeline's smallest; 4 latent channels, no shift: CogView4's decoder divides by the scaling
    factor only) and CogView4's scheduler (dynamic, linear time shift)."""
    transformer = _cogview4()
    torch.manual_seed(seed)
    tokenizer = glm4_tokenizer()
    text_encoder = GlmModel(
        GlmConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=256,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    scheduler = _flow_match(
        base_image_seq_len=256,
        base_shift=0.25,
        max_shift=0.75,
        shift=1.0,
        use_dynamic_shifting=True,
        time_shift_type="linear",
    )
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=1.5,
    )
    return _eval(CogView4Pipeline(tokenizer, text_encoder, vae, transformer, scheduler))


def tiny_hunyuanimage_transformer(glyph_dim: int | None = 16) -> HunyuanImageTransformer2DModel:
    """Returns group_b's HunyuanImage-2.1 transformer (1 double + 1 single block, 1 refiner block, width 32, 2×2
    patches, 24-wide text) with the ByT5 glyph projection (`text_embed_2_dim` = glyph_dim) the released model has."""
    config = {key: value for key, value in tiny_hunyuanimage().config.items() if not key.startswith("_")}
    torch.manual_seed(0)
    return HunyuanImageTransformer2DModel(**config | {"text_embed_2_dim": glyph_dim}).eval()


def tiny_hunyuanimage_pipeline(seed: int = 0) -> HunyuanImagePipeline:
    """Returns a HunyuanImagePipeline without guider (the pipeline then runs one conditional call per step): the
    transformer of `tiny_hunyuanimage_transformer`, a 3-layer Qwen2.5-VL text model 24 wide (the pipeline takes
    hidden_states[-3], a layer's output only from 3 layers on), a 1-layer ByT5 (T5) glyph encoder 16 wide, a 2-block
    AutoencoderKLHunyuanImage (scale 2, 4 latent channels) and HunyuanImage's fixed-shift scheduler."""
    transformer = tiny_hunyuanimage_transformer()
    torch.manual_seed(seed)
    template = HunyuanImagePipeline(None, None, None, None, None, None, None).prompt_template_encode  # __init__'s
    tokenizer = qwen_tokenizer(template)
    tokenizer_2 = ByT5Tokenizer()
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=16,
            d_kv=8,
            d_ff=32,
            num_layers=1,
            num_heads=2,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            pad_token_id=tokenizer_2.pad_token_id,
            eos_token_id=tokenizer_2.eos_token_id,
        )
    )
    vae = AutoencoderKLHunyuanImage(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        spatial_compression_ratio=2,
        sample_size=32,
        scaling_factor=0.75,
    )
    return _eval(
        HunyuanImagePipeline(
            scheduler=_flow_match(shift=5.0),
            vae=vae,
            text_encoder=qwen25_vl(tokenizer, 24, 3, max_position_embeddings=2048),
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
        )
    )
