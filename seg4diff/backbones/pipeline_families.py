"""One declarative row per diffusers pipeline family whose forwards a `RecordedBackbone` records
(`seg4diff/backbones/recorded.py`): where the prompt's own tokens sit in the attention's text sequence (chat templates,
dropped prefixes, register tokens, padding), the flow's latent space (the VAE posterior mean normalised as the
pipeline's decoder expects), packing, the timestep's unit and the call's arguments. Each function says what the
pipeline does; `tests/test_recorded_backbones.py` checks every row against its pipeline."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers.models.transformers.transformer_z_image import SEQ_MULTI_OF

from seg4diff.backbones.backbone import TextToken, _token_spans


def _template_tokens(tokenizer, texts: list[str], starts: list[int], lengths: list[int], encoder: str, **kwargs):
    """Returns, per text, every token of `tokenizer(texts, **kwargs)` with its character span relative to the
    prompt embedded at texts[i][starts[i]:starts[i] + lengths[i]] ((0, 0) outside it: template, special, padding)."""
    encoding = tokenizer(texts, return_offsets_mapping=True, **kwargs)
    rows = []
    for ids, offsets, start, length in zip(encoding["input_ids"], encoding["offset_mapping"], starts, lengths):
        names = tokenizer.convert_ids_to_tokens(ids)
        row = []
        for name, (a, b) in zip(names, offsets):
            inside = b > a and a < start + length and b > start
            span = (max(a - start, 0), min(b - start, length)) if inside else (0, 0)
            row.append(TextToken(encoder, name, *span))
        rows.append(row)
    return rows


def _blank(encoder: str) -> TextToken:
    return TextToken(encoder, "", 0, 0)


def _flux2_tokens(pipe, prompts: list[str], text_length: int) -> list[list[TextToken]]:
    """FLUX.2: Mistral's chat template (BOS, FLUX.2's system message, [INST] prompt [/INST]) padded to text_length."""
    from diffusers.pipelines.flux2.pipeline_flux2 import format_input

    cleaned = [prompt.replace("[IMG]", "") for prompt in prompts]  # as format_input cleans it
    texts = [
        pipe.tokenizer.apply_chat_template(message, tokenize=False)
        for message in format_input(prompts, pipe.system_message)
    ]
    starts = [text.rindex(prompt) for text, prompt in zip(texts, cleaned)]  # the user message comes last
    return _template_tokens(
        pipe.tokenizer,
        texts,
        starts,
        [len(p) for p in cleaned],
        "mistral",
        add_special_tokens=False,
        padding="max_length",
        max_length=text_length,
        truncation=True,
    )


def _qwenimage_tokens(pipe, prompts: list[str], text_length: int) -> list[list[TextToken]]:
    """Qwen-Image: Qwen's chat template, its first `prompt_template_encode_start_idx` tokens (the system prefix)
    dropped, each prompt's valid tokens kept and padded to the batch's longest, at most text_length."""
    template, drop = pipe.prompt_template_encode, pipe.prompt_template_encode_start_idx
    start = template.index("{}")
    rows = _template_tokens(
        pipe.tokenizer,
        [template.format(prompt) for prompt in prompts],
        [start] * len(prompts),
        [len(p) for p in prompts],
        "qwen",
        max_length=pipe.tokenizer_max_length + drop,
        truncation=True,
    )
    kept = [row[drop:][:text_length] for row in rows]
    longest = max(len(row) for row in kept)
    return [row + [_blank("qwen")] * (longest - len(row)) for row in kept]


def _t5_tokens(pipe, prompts: list[str], text_length: int) -> list[list[TextToken]]:
    """T5 (Chroma) or UMT5 (AuraFlow): padded to text_length; AuraFlow's register tokens come first."""
    registers = getattr(pipe.transformer, "register_tokens", None)
    before = [_blank("register")] * (0 if registers is None else registers.shape[1])
    return [before + row for row in _token_spans(pipe.tokenizer, prompts, text_length, "t5")]


def _longcat_tokens(pipe, prompts: list[str], text_length: int) -> list[list[TextToken]]:
    """LongCat-Image: each prompt's own tokens, no template (the encoder's chat prefix and suffix are cut from its
    output), quoted spans a character at a time (`split_quotation`), truncated and padded to `tokenizer_max_length`,
    the pipeline's fixed text length."""
    from diffusers.pipelines.longcat_image.pipeline_longcat_image import split_quotation

    tokenizer, length = pipe.tokenizer, pipe.tokenizer_max_length
    if text_length != length:
        raise ValueError(f"LongCat-Image's text length is its tokenizer_max_length ({length}), not {text_length}")
    rows = []
    for prompt in prompts:
        row, start = [], 0
        for part, quoted in split_quotation(prompt):
            pieces = [(start + i, char) for i, char in enumerate(part)] if quoted else [(start, part)]
            for offset, piece in pieces:
                encoding = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
                names = tokenizer.convert_ids_to_tokens(encoding["input_ids"])
                spans = encoding["offset_mapping"]
                row += [TextToken("qwen", name, offset + a, offset + b) for name, (a, b) in zip(names, spans)]
            start += len(part)
        row = row[:length]
        padding = [_blank("qwen")] * (length - len(row))
        rows.append(padding + row if tokenizer.padding_side == "left" else row + padding)
    return rows


def _ovis_tokens(pipe, prompts: list[str], text_length: int) -> list[list[TextToken]]:
    """Ovis-Image: Qwen3's chat template (no thinking) over its system prompt + the prompt, padded to text_length +
    `user_prompt_begin_id`, whose first `user_prompt_begin_id` (28) tokens are dropped."""
    texts, drop = pipe._get_messages(prompts), pipe.user_prompt_begin_id
    starts = [text.index(pipe.system_prompt + prompt) + len(pipe.system_prompt) for text, prompt in zip(texts, prompts)]
    rows = _template_tokens(
        pipe.tokenizer,
        texts,
        starts,
        [len(p) for p in prompts],
        "qwen",
        padding="max_length",
        truncation=True,
        max_length=text_length + drop,
        add_special_tokens=False,
    )
    return [row[drop:] for row in rows]


def _ernie_tokens(pipe, prompts: list[str], text_length: int) -> list[list[TextToken]]:
    """ERNIE-Image: each prompt tokenized alone with the tokenizer's special tokens (Mistral's BOS), one blank for an
    empty one, at most text_length, zero-padded to the batch's longest (the transformer masks the padding)."""
    rows = _template_tokens(
        pipe.tokenizer, prompts, [0] * len(prompts), [len(p) for p in prompts], "mistral", truncation=True
    )
    kept = [(row or [_blank("mistral")])[:text_length] for row in rows]  # the pipeline's [BOS] for no tokens
    longest = max(len(row) for row in kept)
    return [row + [_blank("mistral")] * (longest - len(row)) for row in kept]


def _cogview4_tokens(pipe, prompts: list[str], text_length: int) -> list[list[TextToken]]:
    """CogView4: GLM-4's tokens ([gMASK] <sop> prompt) padded to the batch's longest (GLM-4 pads left), then
    left-padded with pad tokens to a multiple of 16; no mask, neither to GLM nor to the transformer."""
    rows = _template_tokens(
        pipe.tokenizer, prompts, [0] * len(prompts), [len(p) for p in prompts], "glm",
        padding="longest", max_length=text_length, truncation=True, add_special_tokens=True,
    )  # fmt: skip
    return [[_blank("glm")] * (-len(row) % 16) + row for row in rows]


_GLYPH_QUOTES = (r"\'(.*?)\'", r"\"(.*?)\"", r"‘(.*?)’", r"“(.*?)”")  # extract_glyph_text's patterns, in its order


def _glyph_tokens(pipe, prompt: str) -> tuple[list[TextToken], list[int]]:
    """HunyuanImage: the ByT5 bytes of the prompt's glyph text ('Text "q". ' per quoted q, as extract_glyph_text
    writes it) padded to tokenizer_2_max_length, each byte spanning its character of the prompt where it is quoted
    text, and the tokenizer's mask (none valid where nothing is quoted: the pipeline passes zeros)."""
    length = pipe.tokenizer_2_max_length
    quoted = [match.span(1) for pattern in _GLYPH_QUOTES for match in re.finditer(pattern, prompt)]
    if not quoted:
        return [_blank("byt5")] * length, [0] * length
    text, chars = "", []  # the glyph text and, per character, its index in the prompt (None: the template's)
    for a, b in quoted:
        text += f'Text "{prompt[a:b]}". '
        chars += [None] * 6 + list(range(a, b)) + [None] * 3
    per_byte = [k for ch, k in zip(text, chars) for _ in ch.encode("utf-8")]  # ByT5 tokens are the UTF-8 bytes
    encoding = pipe.tokenizer_2(text, padding="max_length", max_length=length, truncation=True)
    names = pipe.tokenizer_2.convert_ids_to_tokens(encoding["input_ids"])
    kept = sum(encoding["attention_mask"]) - 1  # the bytes kept, before </s>
    spans = [(k, k + 1) if i < kept and (k := per_byte[i]) is not None else (0, 0) for i in range(length)]
    return [TextToken("byt5", name, *span) for name, span in zip(names, spans)], encoding["attention_mask"]


def _hunyuanimage_tokens(pipe, prompts: list[str], text_length: int) -> list[list[TextToken]]:
    """HunyuanImage-2.1: Qwen's template padded to tokenizer_max_length + 34 and its first 34 tokens (the system
    prefix) dropped (the pipeline's text length is fixed: `text_length` unused); with the transformer's ByT5
    projection, each prompt's joint text is its valid glyph bytes, its valid Qwen tokens, the glyph padding, the Qwen
    padding (the transformer reorders them so, per sample)."""
    template, drop = pipe.prompt_template_encode, pipe.prompt_template_encode_start_idx
    texts, start = [template.format(prompt) for prompt in prompts], template.index("{}")
    kwargs = {"max_length": pipe.tokenizer_max_length + drop, "padding": "max_length", "truncation": True}
    rows = _template_tokens(pipe.tokenizer, texts, [start] * len(prompts), [len(p) for p in prompts], "qwen", **kwargs)
    masks = pipe.tokenizer(texts, **kwargs)["attention_mask"]
    qwen = [(row[drop:], mask[drop:]) for row, mask in zip(rows, masks)]
    if pipe.transformer.context_embedder_2 is None:  # the transformer then ignores the glyph text
        return [row for row, _ in qwen]
    joint = []
    for (row, mask), (glyph, glyph_mask) in zip(qwen, (_glyph_tokens(pipe, prompt) for prompt in prompts)):
        valid = [t for t, m in zip(glyph, glyph_mask) if m] + [t for t, m in zip(row, mask) if m]
        joint.append(valid + [t for t, m in zip(glyph, glyph_mask) if not m] + [t for t, m in zip(row, mask) if not m])
    return joint


def _zimage_tokens(pipe, prompts: list[str], text_length: int) -> list[list[TextToken]]:
    """Z-Image: Qwen3's chat template (one user message, the generation prompt, thinking on), truncated to
    text_length; the padding dropped, each caption padded to a multiple of SEQ_MULTI_OF (32) with the transformer's
    pad token, then to the batch's longest (masked)."""
    texts = [
        pipe.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=True
        )
        for prompt in prompts
    ]
    starts = [text.index(prompt) for text, prompt in zip(texts, prompts)]  # the user message is the template's first
    rows = _template_tokens(
        pipe.tokenizer, texts, starts, [len(p) for p in prompts], "qwen", max_length=text_length, truncation=True
    )
    longest = max(len(row) + (-len(row)) % SEQ_MULTI_OF for row in rows)
    return [row + [_blank("qwen")] * (longest - len(row)) for row in rows]


def _lumina2_tokens(pipe, prompts: list[str], text_length: int) -> list[list[TextToken]]:
    """Lumina 2: Gemma's BOS, then `system_prompt + " <Prompt Start> " + prompt`, truncated to text_length; the
    transformer keeps each caption's valid tokens (before the image's), padded here to the batch's longest."""
    head = pipe.system_prompt + " <Prompt Start> "
    rows = _template_tokens(
        pipe.tokenizer, [head + prompt for prompt in prompts], [len(head)] * len(prompts),
        [len(p) for p in prompts], "gemma", max_length=text_length, truncation=True,
    )  # fmt: skip
    longest = max(len(row) for row in rows)
    return [row + [_blank("gemma")] * (longest - len(row)) for row in rows]


def _posterior_mean(pipe, images: torch.Tensor) -> torch.Tensor:
    vae = pipe.vae
    return vae.encode((2 * images - 1).to(vae.device, vae.dtype)).latent_dist.mean


def _shift_scale_latents(pipe, images: torch.Tensor) -> torch.Tensor:
    """SD-style VAEs: (mean − shift_factor) × scaling_factor, as the pipeline's decoder inverts it."""
    config = pipe.vae.config
    return (_posterior_mean(pipe, images) - (config.shift_factor or 0.0)) * config.scaling_factor


def _scale_latents(pipe, images: torch.Tensor) -> torch.Tensor:
    """CogView4, HunyuanImage: the posterior mean × scaling_factor (their decoders divide by it, shift nothing)."""
    return _posterior_mean(pipe, images) * pipe.vae.config.scaling_factor


def _bn_normalised(pipe, images: torch.Tensor, eps: float) -> torch.Tensor:
    """FLUX.2's VAE: the posterior mean patchified 2×2 into channels, normalised by the VAE's batch-norm statistics."""
    latents = pipe._patchify_latents(_posterior_mean(pipe, images))
    bn = pipe.vae.bn
    mean = bn.running_mean.view(1, -1, 1, 1).to(latents)
    std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + eps).to(latents)
    return (latents - mean) / std


def _flux2_latents(pipe, images: torch.Tensor) -> torch.Tensor:
    """FLUX.2: batch-norm normalised with the config's ε."""
    return _bn_normalised(pipe, images, pipe.vae.config.batch_norm_eps)


def _ernie_latents(pipe, images: torch.Tensor) -> torch.Tensor:
    """ERNIE-Image: FLUX.2's VAE, normalised with the ε = 1e-5 its pipeline's decoder uses (not the config's)."""
    return _bn_normalised(pipe, images, 1e-5)


def _qwenimage_latents(pipe, images: torch.Tensor) -> torch.Tensor:
    """Qwen-Image: its video VAE's one-frame posterior mean, normalised by the config's per-channel mean and std."""
    vae = pipe.vae
    mean = vae.encode((2 * images - 1).to(vae.device, vae.dtype)[:, :, None]).latent_dist.mean[:, :, 0]
    shape = (1, -1, 1, 1)
    centre = torch.tensor(vae.config.latents_mean).view(shape).to(mean)
    std = torch.tensor(vae.config.latents_std).view(shape).to(mean)
    return (mean - centre) / std


def _flatten(latents: torch.Tensor) -> torch.Tensor:
    """(batch, channel, h, w) → (batch, h·w, channel): one token per latent pixel (FLUX.2's packing)."""
    return latents.flatten(2).transpose(1, 2)


def _unflatten(tokens: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(shape)


def _pack2x2(latents: torch.Tensor) -> torch.Tensor:
    """(batch, channel, h, w) → (batch, h/2·w/2, 4·channel): 2×2 latent pixels per token (FLUX.1, Chroma, Qwen)."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h // 2 * (w // 2), c * 4)


def _unpack2x2(tokens: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    b, c, h, w = shape
    return tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(shape)


def _identity(latents: torch.Tensor, shape: torch.Size | None = None) -> torch.Tensor:
    return latents


def _per_sample_frames(latents: torch.Tensor) -> list[torch.Tensor]:
    """(batch, channel, h, w) → per sample (channel, 1, h, w): Z-Image's one-frame latent list."""
    return list(latents.unsqueeze(2).unbind(0))


def _stack_frames(frames: list[torch.Tensor], shape: torch.Size | None = None) -> torch.Tensor:
    return torch.stack([frame.float() for frame in frames]).squeeze(2)


def _per_mille(pipe, sigma: torch.Tensor, image_tokens: int) -> torch.Tensor:
    """The scheduler's timestep t = σ·1000 divided by 1000, in fp32 as the pipeline divides it (FLUX.2, Qwen-Image,
    Chroma, AuraFlow, Ovis-Image): σ up to an ulp."""
    scale = pipe.scheduler.config.num_train_timesteps
    return sigma * scale / scale


def _scheduler_timestep(pipe, sigma: torch.Tensor, image_tokens: int) -> torch.Tensor:
    """The scheduler's timestep itself, σ·1000 (Bria, ERNIE-Image)."""
    return sigma * pipe.scheduler.config.num_train_timesteps


def _per_mille_in_model_dtype(pipe, sigma: torch.Tensor, image_tokens: int) -> torch.Tensor:
    """LongCat-Image: t = σ·1000 cast to the latents' dtype, then divided by 1000."""
    scale = pipe.scheduler.config.num_train_timesteps
    return (sigma * scale).to(pipe.transformer.dtype) / scale


def _cogview4_timestep(pipe, sigmas: torch.Tensor, image_tokens: int) -> torch.Tensor:
    """CogView4: the unshifted timestep, whole: the pipeline gives its transformer the integers of linspace(1000, 1)
    and steps with the σ its scheduler shifts from them (μ from the image tokens), so σ's shift is inverted and
    rounded."""
    from diffusers.pipelines.cogview4.pipeline_cogview4 import calculate_shift

    config = pipe.scheduler.config
    if config.use_dynamic_shifting:
        mu = calculate_shift(image_tokens, config.base_image_seq_len, config.base_shift, config.max_shift)
        factor = mu if config.time_shift_type == "linear" else np.exp(mu)
    else:
        factor = config.shift
    sigma = sigmas.double()
    unshifted = sigma / (sigma + factor * (1 - sigma))  # σ = f·u / (1 + (f − 1)·u), inverted
    return torch.round(unshifted * config.num_train_timesteps).to(sigmas.dtype)


def _zimage_timestep(pipe, sigma: torch.Tensor, image_tokens: int) -> torch.Tensor:
    """Z-Image: (1000 − t) / 1000 of the scheduler's t = σ·1000, in fp32 as the pipeline computes it: 1 − σ."""
    return (1000 - sigma * pipe.scheduler.config.num_train_timesteps) / 1000


def _lumina2_timestep(pipe, sigma: torch.Tensor, image_tokens: int) -> torch.Tensor:
    """Lumina 2: 1 − t / 1000 of the scheduler's t = σ·1000 (t = 0 is its noise), in fp32 as the pipeline has it."""
    return 1 - _per_mille(pipe, sigma, image_tokens)


def _zimage_text(kwargs: dict) -> torch.Tensor:
    """Z-Image: the per-sample caption features `cap_feats`, zero where the transformer puts its pad token (up to a
    multiple of SEQ_MULTI_OF) and where the batch is padded."""
    captions = kwargs["cap_feats"]
    longest = max(len(c) + (-len(c)) % SEQ_MULTI_OF for c in captions)
    return torch.stack([torch.nn.functional.pad(c, (0, 0, 0, longest - len(c))) for c in captions])


def _lumina2_text(kwargs: dict) -> torch.Tensor:
    """Lumina 2: the caption's rows up to the batch's longest valid length (its attention mask's count)."""
    return kwargs["encoder_hidden_states"][:, : int(kwargs["encoder_attention_mask"].sum(1).max())]


def _zimage_guidance(scale: float) -> dict:
    return {"guidance_scale": scale - 1.0}  # Z-Image steps with cond + s·(cond − uncond): s = w − 1


def _vae_scale(pipe) -> int:
    """Pixels per VAE latent pixel: the pipeline's `vae_scale_factor`."""
    return pipe.vae_scale_factor


def _bria_vae_scale(pipe) -> int:
    """Bria: half the pipeline's `vae_scale_factor` (2 ** len(block_out_channels), which counts its 2×2 packing)."""
    return pipe.vae_scale_factor // 2


def _no_registers(transformer: torch.nn.Module) -> int:
    return 0


def _guidance_scale(scale: float) -> dict:
    return {"guidance_scale": scale}


@dataclass(frozen=True)
class PipelineFamily:
    """How one diffusers pipeline family's forward is formed from (latents, σ, prompts)."""

    name: str  # the backbone's family name
    pipeline: str  # the diffusers pipeline class
    default_text_length: int
    prompt_tokens: Callable[[object, list[str], int], list[list[TextToken]]]  # per attention text position
    latents: Callable[[object, torch.Tensor], torch.Tensor]  # images in [0, 1] → the flow's latent space
    patch: int | None  # latent pixels per image token side (None: the transformer's config.patch_size)
    latent_scale: int = 1  # VAE latent pixels per side of one pixel of the flow's latents (FLUX.2 patchifies 2×2)
    vae_scale: Callable[[object], int] = _vae_scale  # pixels per VAE latent pixel
    pack: Callable[[torch.Tensor], torch.Tensor] = _identity  # latents → the transformer's image input
    unpack: Callable[[torch.Tensor, torch.Size], torch.Tensor] = _identity
    # (pipe, σ (fp32), image tokens) → what the transformer is given (CogView4's depends on the image size)
    timestep: Callable[[object, torch.Tensor, int], torch.Tensor] = _per_mille
    uncond_free: dict = field(default_factory=dict)  # the call's arguments that turn classifier-free guidance off
    guidance: Callable[[float], dict] = _guidance_scale  # the call's arguments for classifier-free guidance
    text_length_arg: str | None = "max_sequence_length"  # None: the pipeline fixes its text length
    text_input: str = "encoder_hidden_states"  # the transformer's argument holding the text sequence
    text: Callable[[dict], torch.Tensor] | None = None  # recorded call → (batch, attention text, dim); None: text_input
    image_input: str = "hidden_states"  # the transformer's argument holding the image tokens
    timestep_input: str = "timestep"  # the transformer's argument holding the timestep
    velocity_sign: float = 1.0  # the pipeline steps with this × the transformer's output (−1: it predicts x0 − noise)
    registers: Callable[[torch.nn.Module], int] = _no_registers  # text positions the transformer prepends


def _auraflow_registers(transformer: torch.nn.Module) -> int:
    return transformer.register_tokens.shape[1]


def _qwenimage_guidance(scale: float) -> dict:
    return {"true_cfg_scale": scale, "negative_prompt": ""}  # true CFG runs only with a negative prompt


def _longcat_guidance(scale: float) -> dict:
    return {"guidance_scale": scale, "enable_prompt_rewrite": False}  # else its text encoder rewrites the prompt


def _ernie_guidance(scale: float) -> dict:
    return {"guidance_scale": scale, "use_pe": False}  # else its prompt enhancer rewrites the prompt


def _hunyuanimage_glyph_positions(transformer: torch.nn.Module) -> int:
    """HunyuanImage: the ByT5 glyph positions (the pipeline's fixed 128) the transformer joins to the Qwen text."""
    return 0 if transformer.context_embedder_2 is None else 128


def _guider_guidance(scale: float) -> dict:
    """HunyuanImage: no call argument; CFG is its `guider` component's (none: one conditional call per step)."""
    return {}


def _bria_guidance(scale: float) -> dict:
    return {"guidance_scale": scale, "negative_prompt": ""}  # without a negative its unconditional text is zeros


NO_CFG = {"guidance_scale": 1.0}
PIPELINE_FAMILIES = [
    PipelineFamily(
        "flux2", "Flux2Pipeline", 512, _flux2_tokens, _flux2_latents,
        patch=1, latent_scale=2, pack=_flatten, unpack=_unflatten,
    ),  # guidance-distilled: one call per step, the embedded guidance the pipeline's default
    PipelineFamily(
        "qwenimage", "QwenImagePipeline", 512, _qwenimage_tokens, _qwenimage_latents,
        patch=2, pack=_pack2x2, unpack=_unpack2x2, uncond_free={"true_cfg_scale": 1.0}, guidance=_qwenimage_guidance,
    ),
    PipelineFamily(
        "chroma", "ChromaPipeline", 512, _t5_tokens, _shift_scale_latents,
        patch=2, pack=_pack2x2, unpack=_unpack2x2, uncond_free=NO_CFG,
    ),
    PipelineFamily(
        "auraflow", "AuraFlowPipeline", 256, _t5_tokens, _shift_scale_latents,
        patch=2, uncond_free=NO_CFG, registers=_auraflow_registers,
    ),
    PipelineFamily(
        "bria", "BriaPipeline", 128, _t5_tokens, _shift_scale_latents,
        patch=2, vae_scale=_bria_vae_scale, pack=_pack2x2, unpack=_unpack2x2, timestep=_scheduler_timestep,
        uncond_free=NO_CFG, guidance=_bria_guidance,
    ),
    PipelineFamily(
        "longcat", "LongCatImagePipeline", 512, _longcat_tokens, _shift_scale_latents,
        patch=2, pack=_pack2x2, unpack=_unpack2x2, timestep=_per_mille_in_model_dtype,
        uncond_free=NO_CFG | {"enable_prompt_rewrite": False}, guidance=_longcat_guidance,
        text_length_arg=None,  # tokenizer_max_length (512), not an argument of the call
    ),
    PipelineFamily(
        "ovisimage", "OvisImagePipeline", 256, _ovis_tokens, _shift_scale_latents,
        patch=2, pack=_pack2x2, unpack=_unpack2x2, uncond_free=NO_CFG,
    ),
    PipelineFamily(
        "ernieimage", "ErnieImagePipeline", 512, _ernie_tokens, _ernie_latents,  # 512: a cap; it takes no length
        patch=None, timestep=_scheduler_timestep, uncond_free=NO_CFG | {"use_pe": False}, guidance=_ernie_guidance,
        text_length_arg=None, text_input="text_bth",
    ),
    PipelineFamily(
        "cogview4", "CogView4Pipeline", 1024, _cogview4_tokens, _scale_latents,  # 1024: a cap (longest, to 16)
        patch=2, timestep=_cogview4_timestep, uncond_free=NO_CFG,
    ),
    PipelineFamily(
        "hunyuanimage", "HunyuanImagePipeline", 1000, _hunyuanimage_tokens, _scale_latents,
        patch=None, timestep=_scheduler_timestep, guidance=_guider_guidance,  # patch: the released 1, the tiny 2
        text_length_arg=None, registers=_hunyuanimage_glyph_positions,  # Qwen text fixed at 1000, glyph at 128
    ),
    PipelineFamily(
        "zimage", "ZImagePipeline", 512, _zimage_tokens, _shift_scale_latents,
        patch=2, pack=_per_sample_frames, unpack=_stack_frames, timestep=_zimage_timestep,
        uncond_free={"guidance_scale": 0.0}, guidance=_zimage_guidance,  # CFG runs whenever guidance_scale > 0
        text_input="cap_feats", text=_zimage_text, image_input="x", timestep_input="t", velocity_sign=-1.0,
    ),
    PipelineFamily(
        "lumina2", "Lumina2Pipeline", 256, _lumina2_tokens, _shift_scale_latents,
        patch=2, timestep=_lumina2_timestep, uncond_free=NO_CFG, text=_lumina2_text, velocity_sign=-1.0,
    ),
]  # fmt: skip
