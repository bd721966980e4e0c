"""`trace(pipe)` over whole generations of the real pipelines of every recorded family (tiny, offline).

Per family: what the capture records (steps, batch, layers, image and text tokens), that it leaves the image as it
was, and `prompt_token_positions`: where the prompt's own tokens sit in the text sequence the transformer receives.

How each pipeline builds that sequence (diffusers 0.42.1):
- FLUX.2: Mistral's chat template (BOS, FLUX.2's system prompt, [INST] prompt [/INST]) padded to
  `max_sequence_length`, no mask given to the transformer; several hidden layers stacked along the width, so one
  position per token. Guidance-distilled: one transformer call per step, batch 1.
- Qwen-Image: Qwen's chat template; the first `prompt_template_encode_start_idx` (34) tokens (the system prefix up to
  "user\n") are dropped, the rest (prompt, then "<|im_end|>\n<|im_start|>assistant\n") kept unpadded for one prompt.
  True CFG is a second transformer call per step (conditional first) with the negative prompt's own text length.
- Chroma: T5 padded to `max_sequence_length`; all but the first padding token masked. CFG: two calls per step.
- AuraFlow: UMT5 padded to `max_sequence_length` (padding zeroed, not masked), after the transformer's 8 register
  tokens. CFG batched: [unconditional, conditional] in one call.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from diffusers.pipelines.flux2.pipeline_flux2 import format_input
from diffusers.pipelines.hunyuan_image.pipeline_hunyuanimage import extract_glyph_text
from tiny_family_pipelines import (
    FLUX2_TEXT_LAYERS,
    tiny_auraflow_pipeline,
    tiny_chroma_pipeline,
    tiny_flux2_pipeline,
    tiny_qwenimage_pipeline,
)
from tiny_pipelines_bria_longcat import tiny_bria_pipeline, tiny_longcat_pipeline
from tiny_pipelines_cogview4_hunyuan import tiny_cogview4_pipeline, tiny_hunyuanimage_pipeline
from tiny_pipelines_ovis_ernie import tiny_ernie_pipeline, tiny_ovis_pipeline
from tiny_pipelines_zimage_lumina2 import tiny_lumina2_pipeline, tiny_zimage_pipeline

from seg4diff.backbones.backbone import backbone_from_pipeline
from seg4diff.capture.families import forward_arguments
from seg4diff.capture.trace import trace

PROMPT = "a red cat on a mat"
STEPS = 2
PATCH = 2  # every family here packs (or patchifies) 2×2 latent pixels into one image token
BPE_PROMPT = ("a", "Ġred", "Ġcat", "Ġon", "Ġa", "Ġmat")  # the byte-level BPEs' tokens of PROMPT; "cat" is one
GEMMA_PROMPT = ("▁a", "▁red", "▁cat", "▁on", "▁a", "▁mat")  # Gemma's tokens of PROMPT after " <Prompt Start> "
LUMINA2_SYSTEM = (  # Lumina2Pipeline.system_prompt (set in __init__)
    "You are an assistant designed to generate superior images with the superior degree of image-text alignment "
    "based on textual prompts or user prompts."
)
T5_PROMPT = ("▁a", "▁red", "▁", "c", "a", "t", "▁", "o", "n", "▁a", "▁", "m", "a", "t")  # "cat" is "▁", "c", "a", "t"


def _span_tokens(tokenizer, text: str, start: int, end: int, **kwargs) -> tuple[list[tuple[int, str]], int]:
    """Returns the (index, token) of the tokens of `tokenizer(text, **kwargs)` whose characters overlap
    text[start:end] (special tokens, whose offsets are empty or outside, left out), and the number of tokens."""
    encoding = tokenizer(text, return_offsets_mapping=True, **kwargs)
    tokens = tokenizer.convert_ids_to_tokens(encoding.input_ids)
    spans = encoding.offset_mapping
    kept = [(i, token) for i, (token, (s, e)) in enumerate(zip(tokens, spans)) if e > s and s < end and e > start]
    return kept, len(tokens)


def _padded(tokens: list[tuple[int, str]], count: int, max_length: int, side: str, offset: int = 0):
    """Returns `tokens` (indices among `count` tokens) as positions after truncation and padding to `max_length` on
    `side`, shifted by `offset`."""
    shift = offset + (max_length - min(count, max_length) if side == "left" else 0)
    return [(i + shift, token) for i, token in tokens if i < max_length]


def prompt_token_positions(pipe, prompt: str, max_sequence_length: int | None = None) -> list[tuple[int, str]]:
    """Returns (position in the joint text sequence the transformer receives, token) for each token of `prompt`
    itself, the template, system prompt and special tokens left out; `max_sequence_length` as given to the pipeline
    (None: its default). Built as `pipe.encode_prompt` builds the sequence, without running a model."""
    tokenizer, name = pipe.tokenizer, type(pipe).__name__
    if name == "LongCatImagePipeline":  # the prompt alone (the chat prefix is cut), padded to its fixed length
        tokens, count = _span_tokens(tokenizer, prompt, 0, len(prompt), add_special_tokens=False)
        return _padded(tokens, count, pipe.tokenizer_max_length, tokenizer.padding_side)
    if name == "ErnieImagePipeline":  # the prompt alone, with the tokenizer's BOS; zero padding comes after
        return _span_tokens(tokenizer, prompt, 0, len(prompt))[0]
    if name == "HunyuanImagePipeline":  # Qwen-Image's cut template at its fixed length; quoted text's bytes first
        template, drop = pipe.prompt_template_encode, pipe.prompt_template_encode_start_idx
        start = template.index("{}")
        tokens, _ = _span_tokens(tokenizer, template.format(prompt), start, start + len(prompt))
        glyph = extract_glyph_text(prompt)  # ByT5's valid bytes (and </s>) precede the Qwen text where it has any
        before = len(glyph.encode()) + 1 if glyph and pipe.transformer.context_embedder_2 is not None else 0
        before = min(before, pipe.tokenizer_2_max_length)
        return [(i - drop + before, token) for i, token in tokens if i < pipe.tokenizer_max_length + drop]
    if max_sequence_length is None:
        max_sequence_length = inspect.signature(pipe.__call__).parameters["max_sequence_length"].default
    if name == "Flux2Pipeline":  # the chat template, tokenized without added special tokens (the template has BOS)
        text = tokenizer.apply_chat_template(format_input([prompt], pipe.system_message)[0], tokenize=False)
        cleaned = prompt.replace("[IMG]", "")  # as format_input cleans it
        start = text.rindex(cleaned)  # the user message comes last
        tokens, count = _span_tokens(tokenizer, text, start, start + len(cleaned), add_special_tokens=False)
        return _padded(tokens, count, max_sequence_length, tokenizer.padding_side)
    if name == "QwenImagePipeline":  # the template's first `drop` tokens dropped; padding removed by the mask
        template, drop = pipe.prompt_template_encode, pipe.prompt_template_encode_start_idx
        start = template.index("{}")
        tokens, _ = _span_tokens(tokenizer, template.format(prompt), start, start + len(prompt))
        kept = [(i - drop, token) for i, token in tokens if i < pipe.tokenizer_max_length + drop]
        return [(position, token) for position, token in kept if position < max_sequence_length]
    if name == "CogView4Pipeline":  # [gMASK] <sop> prompt, left-padded with pad tokens to a multiple of 16
        tokens, count = _span_tokens(tokenizer, prompt, 0, len(prompt))
        return [(i + -min(count, max_sequence_length) % 16, token) for i, token in tokens if i < max_sequence_length]
    if name == "ZImagePipeline":  # the chat template, padding dropped by the mask; the caption after the image
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=True
        )
        start = text.index(prompt)
        tokens, count = _span_tokens(tokenizer, text, start, start + len(prompt))
        return _padded(tokens, count, max_sequence_length, "right")
    if name == "Lumina2Pipeline":  # BOS + system prompt + " <Prompt Start> " + prompt, padding dropped
        text = pipe.system_prompt + " <Prompt Start> " + prompt
        tokens, count = _span_tokens(tokenizer, text, len(text) - len(prompt), len(text))
        return _padded(tokens, count, max_sequence_length, "right")
    if name == "OvisImagePipeline":  # the chat template, its first user_prompt_begin_id tokens dropped, padded
        text, drop = pipe._get_messages([prompt])[0], pipe.user_prompt_begin_id
        start = text.index(pipe.system_prompt + prompt) + len(pipe.system_prompt)
        tokens, _ = _span_tokens(tokenizer, text, start, start + len(prompt), add_special_tokens=False)
        return [(i - drop, token) for i, token in tokens if drop <= i < drop + max_sequence_length]
    if name in ("ChromaPipeline", "AuraFlowPipeline", "BriaPipeline"):  # T5 / UMT5, after AuraFlow's registers
        registers = pipe.transformer.register_tokens.shape[1] if name == "AuraFlowPipeline" else 0
        tokens, count = _span_tokens(tokenizer, prompt, 0, len(prompt))
        return _padded(tokens, count, max_sequence_length, tokenizer.padding_side, registers)
    raise TypeError(f"no prompt token positions for {name}")


@dataclass(frozen=True)
class Family:
    """One pipeline's case: how to build and call it, and what its transformer is expected to receive."""

    build: Callable
    call: dict  # the pipeline call's arguments beside the prompt, the steps and the output type
    calls_per_step: int  # transformer calls per denoising step: 2 where CFG runs the negative prompt apart
    batch: int  # the transformer's batch: 2 where CFG batches [unconditional, conditional]
    text_length: int  # text keys of the joint attention
    first: int  # the prompt's first position in the text sequence
    tokens: tuple[str, ...] = BPE_PROMPT  # the prompt's tokens
    cat: range = range(2, 3)  # "cat"'s tokens among them
    layers: tuple[str, ...] = ("num_layers", "num_single_layers")  # the config's joint layer counts
    registers: int = 0  # tokens the transformer puts before the text it is given
    pixels: int = 0  # pixels per image token side (0: the pipeline's vae_scale_factor × PATCH)


FAMILIES = {
    # 38 template tokens: <s> [SYSTEM_PROMPT] (27 tokens of system message) [/SYSTEM_PROMPT] [INST] prompt [/INST]
    "flux2": Family(
        tiny_flux2_pipeline,
        {
            "height": 32,
            "width": 48,
            "guidance_scale": 4.0,  # embedded guidance
            "max_sequence_length": 64,
            "text_encoder_out_layers": FLUX2_TEXT_LAYERS,
        },
        calls_per_step=1,
        batch=1,
        text_length=64,
        first=31,
    ),
    # the negative prompt has the prompt's token count: a capture stacks steps only when their text lengths agree
    "qwenimage": Family(
        tiny_qwenimage_pipeline,
        {"height": 32, "width": 48, "true_cfg_scale": 4.0, "negative_prompt": "a blue dog on a rug"},
        calls_per_step=2,
        batch=1,
        text_length=6 + 5,  # the prompt, then <|im_end|> \n <|im_start|> assistant \n
        first=0,
        layers=("num_layers",),
    ),
    "chroma": Family(
        tiny_chroma_pipeline,
        {"height": 32, "width": 48, "guidance_scale": 4.0, "max_sequence_length": 24},
        calls_per_step=2,
        batch=1,
        text_length=24,
        first=0,
        tokens=T5_PROMPT,
        cat=range(2, 6),
    ),
    # AuraFlow's position table is 8 × 8 tokens: 32 × 16 px is an 8 × 4 grid
    "auraflow": Family(
        tiny_auraflow_pipeline,
        {"height": 32, "width": 16, "guidance_scale": 4.0, "max_sequence_length": 16},
        calls_per_step=1,
        batch=2,
        text_length=8 + 16,  # register tokens, then the padded UMT5 sequence
        first=8,
        tokens=T5_PROMPT,
        cat=range(2, 6),
        layers=("num_mmdit_layers", "num_single_dit_layers"),
        registers=8,
    ),
    "bria": Family(
        tiny_bria_pipeline,
        {"height": 32, "width": 48, "guidance_scale": 4.0, "max_sequence_length": 24},
        calls_per_step=1,
        batch=2,
        text_length=24,
        first=0,
        tokens=T5_PROMPT,
        cat=range(2, 6),
        pixels=4,  # Bria's vae_scale_factor (4 here) counts the 2×2 packing already
    ),
    # LongCat-Image's text length is fixed (tokenizer_max_length): the chat prefix is encoded, then cut
    "longcat": Family(
        tiny_longcat_pipeline,
        {"height": 32, "width": 48, "guidance_scale": 4.0, "enable_prompt_rewrite": False},
        calls_per_step=2,
        batch=1,
        text_length=512,
        first=0,
    ),
    # Ovis drops 28 of the 29 whole-word tokens of "<|im_start|>user\n" + system prompt: its ":" stays at 0
    "ovisimage": Family(
        tiny_ovis_pipeline,
        {"height": 32, "width": 48, "guidance_scale": 4.0, "max_sequence_length": 24},
        calls_per_step=2,
        batch=1,
        text_length=24,
        first=1,
        tokens=("Ġa", "Ġred", "Ġcat", "Ġon", "Ġa", "Ġmat"),
    ),
    # ERNIE: <s> + prompt, unpadded; CFG batched [negative "" (<s>, zero-padded, masked), prompt]
    "ernieimage": Family(
        tiny_ernie_pipeline,
        {"height": 32, "width": 48, "guidance_scale": 4.0, "use_pe": False},
        calls_per_step=1,
        batch=2,
        text_length=1 + 6,
        first=1,
        layers=("num_layers",),
    ),
    # GLM-4: [gMASK] <sop> + 6 prompt tokens, left-padded with pad tokens to 16 (unmasked); "" (the negative) too
    "cogview4": Family(
        tiny_cogview4_pipeline,
        {"height": 32, "width": 48, "guidance_scale": 4.0, "max_sequence_length": 64},
        calls_per_step=2,
        batch=1,
        text_length=16,
        first=10,
        layers=("num_layers",),
    ),
    # HunyuanImage-2.1 without a guider: one call per step; 1000 Qwen positions (34 template tokens dropped) + 128
    # ByT5 glyph positions, per sample [valid glyph bytes, valid Qwen, glyph padding, Qwen padding]
    "hunyuanimage": Family(
        tiny_hunyuanimage_pipeline,
        {"height": 32, "width": 48},
        calls_per_step=1,
        batch=1,
        text_length=1000 + 128,
        first=0,
        registers=128,  # the glyph positions, joined by the transformer (after the valid Qwen tokens here)
    ),
    # [image (8×12 = 96 tokens, a multiple of 32), caption: 14 template tokens padded to 32]; CFG batched [cond, uncond]
    "zimage": Family(
        tiny_zimage_pipeline,
        {"height": 32, "width": 48, "guidance_scale": 4.0, "max_sequence_length": 64},
        calls_per_step=1,
        batch=2,
        text_length=32,
        first=3,
        layers=("n_layers",),
    ),
    # [<bos>, 23 system tokens, "▁<Prompt" "▁Start>", prompt]; a second CFG call; the negative gets no system prompt,
    # so it is given one with the prompt's token count (otherwise the steps' text lengths differ)
    "lumina2": Family(
        tiny_lumina2_pipeline,
        {
            "height": 32,
            "width": 48,
            "guidance_scale": 4.0,
            "negative_prompt": LUMINA2_SYSTEM + " <Prompt Start> a blue dog on a rug",
            "max_sequence_length": 64,
        },
        calls_per_step=2,
        batch=1,
        text_length=32,
        first=26,
        tokens=GEMMA_PROMPT,
        layers=("num_layers",),
    ),
}


def _generate(pipe, call: dict) -> np.ndarray:
    """Returns the images of a seeded STEPS-step generation of PROMPT, as numpy."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return pipe(prompt=PROMPT, num_inference_steps=STEPS, output_type="np", generator=generator, **call).images


@pytest.mark.parametrize("name", FAMILIES)
def test_trace_records_every_step_of_a_family_pipeline_and_leaves_its_image_alone(name):
    """One record per transformer call, of the expected dims; each image query's text mass in (0, 1]; the same
    image as without the capture; "cat"'s positions give (y, x) maps."""
    family = FAMILIES[name]
    pipe = family.build()
    stock = _generate(pipe, family.call)
    received = []  # the text length of every transformer call
    backbone = backbone_from_pipeline(pipe)
    hook = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: received.append(
            backbone.text_of(forward_arguments(module, args, kwargs)).shape[1]
        ),
        with_kwargs=True,
    )
    with trace(pipe) as tc:
        traced = _generate(pipe, family.call)
    hook.remove()
    np.testing.assert_array_equal(traced, stock)  # the capture does not change the output
    assert received == [family.text_length - family.registers] * (STEPS * family.calls_per_step)

    height, width = family.call["height"], family.call["width"]
    pixels = family.pixels or pipe.vae_scale_factor * PATCH
    grid = (height // pixels, width // pixels)
    layers = sum(getattr(pipe.transformer.config, key) for key in family.layers)
    i2t = tc.capture.image_to_text
    assert tc.capture.steps == STEPS * family.calls_per_step
    assert i2t.dims == ("step", "batch", "layer", "head", "image_token", "text_token")
    assert dict(i2t.sizes) == {
        "step": STEPS * family.calls_per_step,
        "batch": family.batch,
        "layer": layers,
        "head": pipe.transformer.config.get("num_attention_heads", pipe.transformer.config.get("n_heads")),
        "image_token": grid[0] * grid[1],
        "text_token": family.text_length,
    }
    assert tc.capture.recorder.grid == grid
    mass = i2t.sum("text_token").values  # each image query's attention to the whole text
    assert (mass > 0).all() and (mass <= 1 + 1e-6).all()  # fp32 sums may round a hair above their true value

    positions = prompt_token_positions(pipe, PROMPT, family.call.get("max_sequence_length"))
    assert positions == [(family.first + i, token) for i, token in enumerate(family.tokens)]
    cat = [positions[i][0] for i in family.cat]
    assert tc.word_positions("cat") == cat  # the family's backbone finds the word where the hand count puts it
    word = tc.word_maps("cat")
    assert word.dims == ("step", "layer", "head", "y", "x") and (word.sizes["y"], word.sizes["x"]) == grid
    maps = tc.capture.maps().isel(text_token=cat)
    assert maps.dims == ("step", "batch", "layer", "head", "y", "x", "text_token")
    assert (maps.sizes["y"], maps.sizes["x"], maps.sizes["text_token"]) == (*grid, len(cat))
    np.testing.assert_array_equal(maps.values.reshape(i2t.isel(text_token=cat).shape), i2t.isel(text_token=cat))


@pytest.mark.parametrize(
    ("name", "padding_side", "cat"),
    [("flux2", "right", 33), ("flux2", "left", 64 - 38 + 33), ("qwenimage", "right", 2)],
)
def test_a_causal_text_encoder_first_changes_at_the_position_of_the_changed_word(name, padding_side, cat):
    """Mistral (FLUX.2) and Qwen2.5-VL (Qwen-Image) are causal: "cat" → "dog" leaves every text position before the
    word's as it was, so the first changed row of the transformer's text is where prompt_token_positions puts it."""
    family = FAMILIES[name]
    pipe = family.build()
    pipe.tokenizer.padding_side = padding_side
    accepted = inspect.signature(pipe.encode_prompt).parameters
    encoding = {key: value for key, value in family.call.items() if key in accepted}  # FLUX.2's length and layers
    with torch.no_grad():
        embeds = [pipe.encode_prompt(text, device="cpu", **encoding)[0] for text in (PROMPT, "a red dog on a mat")]
    changed = (embeds[0] != embeds[1]).any(-1)[0].nonzero().flatten().tolist()
    positions = prompt_token_positions(pipe, PROMPT, family.call.get("max_sequence_length"))
    assert changed[0] == cat == positions[2][0] and positions[2][1] == "Ġcat"
