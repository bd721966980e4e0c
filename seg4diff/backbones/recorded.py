"""Backbones of the diffusers families whose transformer inputs are the pipeline's own, recorded from its call.

SD3 and FLUX.1 build a forward's inputs by hand (`backbone.py`). The other families' pipelines build text sequences,
masks, rotary position ids, image shapes and guidance in ways that differ in every detail, so a `RecordedBackbone`
does not rebuild them: it calls the pipeline itself, without classifier-free guidance, and stops it at its first
transformer call, keeping that call's keyword arguments (one recording per prompt batch and image size). A forward
at σ then takes those arguments with two replaced: the image tokens (the latents packed as the pipeline packs them)
and the timestep (σ in the unit the pipeline gives its transformer). Everything else is one declarative row per
family (`PipelineFamily`, `PIPELINE_FAMILIES`): where the prompt's own tokens sit in the attention's text sequence
(chat templates, dropped prefixes, register tokens, padding side), the latent space (the VAE posterior mean
normalised as the pipeline's decoder expects), packing, and the timestep's unit. `tests/test_recorded_backbones.py`
checks every row against its pipeline: a forward built here is the pipeline's own forward bit for bit, an Euler step
with `velocity` is the pipeline's step, and the pipeline decodes `encode_images`'s latents to the VAE's own
reconstruction.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from seg4diff.backbones.backbone import Backbone, PromptEncoding, TextToken, _token_spans


class _Recorded(Exception):  # noqa: N818 (a control-flow signal, not an error)
    def __init__(self, kwargs: dict):
        self.kwargs = kwargs


def forward_arguments(transformer: torch.nn.Module, args: tuple, kwargs: dict) -> dict:
    """Returns a transformer call's arguments by name (AuraFlow's pipeline passes the image tokens positionally)."""
    return dict(inspect.signature(transformer.forward).bind_partial(*args, **kwargs).arguments)


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


def _posterior_mean(pipe, images: torch.Tensor) -> torch.Tensor:
    vae = pipe.vae
    return vae.encode((2 * images - 1).to(vae.device, vae.dtype)).latent_dist.mean


def _shift_scale_latents(pipe, images: torch.Tensor) -> torch.Tensor:
    """SD-style VAEs: (mean − shift_factor) × scaling_factor, as the pipeline's decoder inverts it."""
    config = pipe.vae.config
    return (_posterior_mean(pipe, images) - (config.shift_factor or 0.0)) * config.scaling_factor


def _flux2_latents(pipe, images: torch.Tensor) -> torch.Tensor:
    """FLUX.2: the posterior mean patchified 2×2 into channels, then normalised by the VAE's batch-norm statistics."""
    latents = pipe._patchify_latents(_posterior_mean(pipe, images))
    bn = pipe.vae.bn
    mean = bn.running_mean.view(1, -1, 1, 1).to(latents)
    std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps).to(latents)
    return (latents - mean) / std


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


@dataclass(frozen=True)
class PipelineFamily:
    """How one diffusers pipeline family's forward is formed from (latents, σ, prompts)."""

    name: str  # the backbone's family name
    pipeline: str  # the diffusers pipeline class
    default_text_length: int
    prompt_tokens: Callable[[object, list[str], int], list[list[TextToken]]]  # per attention text position
    latents: Callable[[object, torch.Tensor], torch.Tensor]  # images in [0, 1] → the flow's latent space
    patch: int  # latent pixels per image token side
    latent_scale: int = 1  # VAE latent pixels per side of one pixel of the flow's latents (FLUX.2 patchifies 2×2)
    pack: Callable[[torch.Tensor], torch.Tensor] = _identity  # latents → the transformer's image input
    unpack: Callable[[torch.Tensor, torch.Size], torch.Tensor] = _identity
    timestep_scale: float = 1.0  # the transformer is given σ × this
    uncond_free: dict = field(default_factory=dict)  # the call's arguments that turn classifier-free guidance off
    guidance: Callable[[float], dict] = lambda scale: {"guidance_scale": scale}  # the call's arguments for CFG
    text_length_arg: str = "max_sequence_length"
    registers: Callable[[torch.nn.Module], int] = lambda transformer: 0  # text positions the transformer prepends


PIPELINE_FAMILIES = [
    PipelineFamily(
        "flux2",
        "Flux2Pipeline",
        512,
        _flux2_tokens,
        _flux2_latents,
        patch=1,
        latent_scale=2,
        pack=_flatten,
        unpack=_unflatten,
    ),
    PipelineFamily(
        "qwenimage",
        "QwenImagePipeline",
        512,
        _qwenimage_tokens,
        _qwenimage_latents,
        patch=2,
        pack=_pack2x2,
        unpack=_unpack2x2,
        uncond_free={"true_cfg_scale": 1.0},
        guidance=lambda scale: {"true_cfg_scale": scale, "negative_prompt": " "},  # true CFG needs a negative
    ),
    PipelineFamily(
        "chroma",
        "ChromaPipeline",
        512,
        _t5_tokens,
        _shift_scale_latents,
        patch=2,
        pack=_pack2x2,
        unpack=_unpack2x2,
        uncond_free={"guidance_scale": 1.0},
    ),
    PipelineFamily(
        "auraflow",
        "AuraFlowPipeline",
        256,
        _t5_tokens,
        _shift_scale_latents,
        patch=2,
        uncond_free={"guidance_scale": 1.0},
        registers=lambda transformer: transformer.register_tokens.shape[1],
    ),
]


@dataclass
class RecordedPrompt(PromptEncoding):
    """A prompt batch's encoding whose transformer arguments are recorded from the pipeline, once per image size."""

    prompts: list[str] = field(default_factory=list)
    record: Callable[[list[str], int, int], dict] | None = None
    recordings: dict[tuple[int, int], dict] = field(default_factory=dict)

    def inputs_at(self, height: int, width: int) -> dict:
        """Returns the recorded keyword arguments of the pipeline's first transformer call at height × width px."""
        if (height, width) not in self.recordings:
            self.recordings[height, width] = self.record(self.prompts, height, width)
        return self.recordings[height, width]


class RecordedBackbone(Backbone):
    """A diffusers pipeline of PIPELINE_FAMILIES: latents, prompts and σ as its row says, every other transformer
    argument recorded from the pipeline's own call."""

    row: PipelineFamily  # set per subclass

    @property
    def patch_size(self) -> int:
        return self.row.patch

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent side of the flow's latent space (FLUX.2's 2×2 patchified latents: twice the VAE's)."""
        return self.pipe.vae_scale_factor * self.row.latent_scale

    def text_length_of(self, attention_text: int) -> int:
        return attention_text - self.row.registers(self.transformer)

    def generation_arguments(self, guidance: float) -> dict:
        return {self.row.text_length_arg: self.text_length} | self.row.guidance(guidance) | self.call_arguments

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.row.latents(self.pipe, images.to(self.device)).to(self.dtype)

    def prompt_tokens(self, prompts: list[str]) -> list[list[TextToken]]:
        return self.row.prompt_tokens(self.pipe, prompts, self.text_length)

    def record(self, prompts: list[str], height: int, width: int, steps: int = 2) -> dict:
        """Returns the keyword arguments of the pipeline's first transformer call for `prompts` at height × width
        pixels in a `steps`-step generation, without classifier-free guidance (the pipeline stopped there; its
        scheduler holds the generation's schedule)."""

        def stop(module, args, kwargs):
            raise _Recorded(forward_arguments(module, args, kwargs))

        handle = self.transformer.register_forward_pre_hook(stop, with_kwargs=True)
        self.pipe.set_progress_bar_config(disable=True)
        try:
            self.pipe(
                prompt=prompts,
                height=height,
                width=width,
                num_inference_steps=steps,
                output_type="latent",
                generator=torch.Generator().manual_seed(0),
                **{self.row.text_length_arg: self.text_length},
                **self.row.uncond_free,
                **self.call_arguments,
            )
        except _Recorded as recorded:
            return recorded.kwargs
        finally:
            handle.remove()
        raise RuntimeError(f"{self.row.pipeline} returned without calling its transformer")

    def sigmas(self, num_steps: int, image_tokens: int) -> np.ndarray:
        """Returns the σ the pipeline's own schedule gives each of `num_steps` steps for `image_tokens` image tokens
        (its shift, dynamic or not, as its call computes it)."""
        rows = max(r for r in range(1, int(image_tokens**0.5) + 1) if image_tokens % r == 0)
        step = self.vae_scale_factor * self.patch_size
        self.record([""], rows * step, image_tokens // rows * step, num_steps)
        return self.pipe.scheduler.sigmas[:num_steps].float().numpy()

    def encode_prompts(self, prompts: list[str]) -> RecordedPrompt:
        tokens = self.prompt_tokens(prompts)
        side = 2 * self.vae_scale_factor * self.patch_size  # 2 × 2 image tokens: the text does not depend on it
        encoding = RecordedPrompt(None, None, tokens, prompts=list(prompts), record=self.record)
        text = encoding.inputs_at(side, side)["encoder_hidden_states"]
        attention_text = text.shape[1] + self.row.registers(self.transformer)
        if attention_text != len(tokens[0]):
            raise RuntimeError(
                f"{self.row.pipeline} gives its transformer {attention_text} text positions but the tokenizer "
                f"gives {len(tokens[0])}"
            )
        encoding.prompt_embeds = text
        return encoding

    def transformer_inputs(self, latents: torch.Tensor, sigma: float | torch.Tensor, prompt: PromptEncoding) -> dict:
        if not isinstance(prompt, RecordedPrompt):
            raise TypeError(f"{self.row.pipeline}'s forwards need an encoding from its own encode_prompts")
        height, width = (side * self.vae_scale_factor for side in latents.shape[-2:])
        recorded = prompt.inputs_at(height, width)
        timestep = (self._sigmas(latents, sigma) * self.row.timestep_scale).to(recorded["timestep"].dtype)
        return recorded | {"hidden_states": self.row.pack(latents), "timestep": timestep, "return_dict": False}

    def velocity(self, latents: torch.Tensor, sigma: float | torch.Tensor, prompt: PromptEncoding) -> torch.Tensor:
        out = self.transformer(**self.transformer_inputs(latents, sigma, prompt))[0]
        return self.row.unpack(out[:, : self.row.pack(latents).shape[1]], latents.shape)


def recorded_backbones() -> dict[str, type[RecordedBackbone]]:
    """Returns pipeline class name → its RecordedBackbone subclass, one per PIPELINE_FAMILIES row."""
    return {
        row.pipeline: type(
            f"{row.pipeline.removesuffix('Pipeline')}Backbone",
            (RecordedBackbone,),
            {"row": row, "family": row.name, "default_text_length": row.default_text_length},
        )
        for row in PIPELINE_FAMILIES
    }
