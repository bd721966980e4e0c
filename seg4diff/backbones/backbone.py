"""MM-DiT backbones loaded from a hub id or a local directory: SD3 / SD3.5 and FLUX.1 here, every other family in
`recorded.py`.

A `Backbone` exposes what the stages need and nothing else: images → latents (VAE posterior mean, shift and
scale), prompts → embeddings with each text position's source tokenizer and character span, the scheduler's
sigmas, and the inputs of one transformer forward at a given sigma.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np
import torch
from diffusers import DiffusionPipeline, FluxPipeline, StableDiffusion3Pipeline

from seg4diff.config import ModelParams
from seg4diff.errors import ConfigError
from seg4diff.organism.pipeline import OrganismPipeline, is_organism

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
Family = str  # "sd3", "flux", "organism", or a recorded family's name (seg4diff.backbones.recorded)


class ModelLoadError(ConfigError):
    """The configured model cannot be loaded; the message names the path or id and the param to change."""


class TextToken(NamedTuple):
    encoder: str  # which tokenizer produced it: "clip", "t5"
    token: str
    start: int  # character span in the prompt; (0, 0) for special and padding tokens
    end: int


@dataclass
class PromptEncoding:
    prompt_embeds: torch.Tensor  # (batch, text_token, dim): the text half of the joint sequence
    pooled: torch.Tensor  # (batch, pooled_dim)
    tokens: list[list[TextToken]]  # per prompt, one entry per text position of prompt_embeds

    def positions(self, index: int, start: int, end: int, encoder: str | None = None) -> list[int]:
        """Returns the text positions of prompt `index` whose characters overlap [start, end)."""
        return [
            pos
            for pos, tok in enumerate(self.tokens[index])
            if tok.end > tok.start
            and tok.start < end
            and tok.end > start
            and (encoder is None or tok.encoder == encoder)
        ]


def _token_spans(tokenizer, prompts: list[str], max_length: int, encoder: str) -> list[list[TextToken]]:
    enc = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_offsets_mapping=True)
    spans = []
    for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"]):
        names = tokenizer.convert_ids_to_tokens(ids)
        spans.append([TextToken(encoder, name, int(a), int(b)) for name, (a, b) in zip(names, offsets)])
    return spans


def _looks_like_path(path: str) -> bool:
    return path.startswith((".", "/", "~")) or Path(path).expanduser().exists() or path.count("/") != 1


def model_digest(params: ModelParams, sample_bytes: int = 1 << 20) -> str:
    """Returns a short content digest of a local model directory (each file's path, size, first and last MiB), or the
    hub id: the weights behind a path, so that retraining a model in place is never mistaken for the same model."""
    root = Path(params.path).expanduser()
    if not (_looks_like_path(params.path) and root.is_dir()):
        return params.path
    digest = hashlib.sha256()
    for file in sorted(f for f in root.rglob("*") if f.is_file()):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(root)}:{size}".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(sample_bytes))
            handle.seek(max(sample_bytes, size - sample_bytes))
            digest.update(handle.read())
    return digest.hexdigest()[:16]


def load_pipeline(params: ModelParams) -> DiffusionPipeline | OrganismPipeline:
    """Returns the pipeline at params.path (a local directory or a hub id), on params.device/dtype."""
    location = str(Path(params.path).expanduser()) if _looks_like_path(params.path) else params.path
    if _looks_like_path(params.path) and not Path(location).is_dir():
        raise ModelLoadError(
            f"model directory {location!r} does not exist: set model.path in params.yaml to a "
            "diffusers pipeline directory or a hub id"
        )
    if is_organism(location):
        return OrganismPipeline.from_pretrained(location, DTYPES[params.dtype]).to(params.device)
    without_t5 = {} if params.t5 else {"text_encoder_3": None, "tokenizer_3": None}
    try:
        pipe = DiffusionPipeline.from_pretrained(
            location,
            dtype=DTYPES[params.dtype],
            use_safetensors=True,
            local_files_only=params.local_files_only,
            trust_remote_code=False,
            **without_t5,
        )
    except (OSError, ValueError, EnvironmentError) as error:
        hint = (
            "it is not in the local Hugging Face cache and model.local_files_only is true (offline)"
            if params.local_files_only
            else "it could not be fetched or read"
        )
        raise ModelLoadError(
            f"cannot load model {location!r}: {hint}. Set model.path to a local pipeline directory "
            f"(or download it on a connected machine first). Cause: {error}"
        ) from None
    return pipe.to(params.device)


def pixels_of(images: np.ndarray) -> torch.Tensor:
    """Returns uint8 images (batch, H, W, 3) as a float tensor (batch, 3, H, W) in [0, 1] (encode_images's input)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


@dataclass
class Backbone:
    """A loaded MM-DiT with the handful of operations the pipeline stages use; one subclass per pipeline family
    (BACKBONES), each saying how its latents, prompts and transformer inputs are formed."""

    pipe: DiffusionPipeline | OrganismPipeline
    text_length: int  # T5 (or organism word, or LLM) tokens in the joint sequence
    call_arguments: dict = field(default_factory=dict)  # the pipeline call's extra arguments (model.call)
    family: ClassVar[Family]
    default_text_length: ClassVar[int]
    patch_size_override: ClassVar[int | None] = None  # pixels of the latent per token side, where packing sets it

    @property
    def transformer(self) -> torch.nn.Module:
        return self.pipe.transformer

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent side."""
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    @property
    def patch_size(self) -> int:
        """Latent pixels per image token side."""
        return self.patch_size_override or self.transformer.config.patch_size

    def generation_arguments(self, guidance: float) -> dict:
        """Returns the pipeline call's arguments for a generation at classifier-free guidance `guidance` with this
        backbone's text length (the joint sequence every other stage gives the transformer)."""
        return {"guidance_scale": guidance, "max_sequence_length": self.text_length} | self.call_arguments

    def text_length_of(self, attention_text: int) -> int:
        """Returns the text length (this backbone's `text_length`) whose joint attention has `attention_text` text
        keys."""
        return attention_text

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """Returns the (rows, cols) of image tokens for an image of height×width pixels."""
        step = self.vae_scale_factor * self.patch_size
        if height % step or width % step:
            raise ValueError(f"image size {height}x{width} is not a multiple of {step} (VAE factor × patch size)")
        return height // step, width // step

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Returns latents (batch, channel, h, w) for images (batch, 3, H, W) in [0, 1]: posterior mean, shifted,
        scaled."""
        vae = self.pipe.vae
        posterior = vae.encode((2 * images - 1).to(self.device, vae.dtype)).latent_dist
        shift = vae.config.shift_factor or 0.0
        return ((posterior.mean - shift) * vae.config.scaling_factor).to(self.dtype)

    def prompt_tokens(self, prompts: list[str]) -> list[list[TextToken]]:
        """Returns, per prompt, every text position of the joint sequence: its tokenizer and character span."""
        raise NotImplementedError

    def _embed(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the pipeline's (prompt embeddings, pooled embedding) of `prompts`, without CFG."""
        raise NotImplementedError

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> PromptEncoding:
        """Returns the prompt embeddings and, for every text position, its tokenizer and character span."""
        embeds, pooled = self._embed(prompts)
        tokens = self.prompt_tokens(prompts)
        if embeds.shape[1] != len(tokens[0]):
            raise RuntimeError(
                f"prompt embeddings have {embeds.shape[1]} positions but the tokenizers give {len(tokens[0])}"
            )
        return PromptEncoding(embeds.to(self.dtype), pooled.to(self.dtype), tokens)

    def sigmas(self, num_steps: int, image_tokens: int) -> np.ndarray:
        """Returns the scheduler's sigma at each of `num_steps` inference steps (dynamic shift where configured)."""
        scheduler = self.pipe.scheduler
        if scheduler.config.get("use_dynamic_shifting", False):
            config = scheduler.config
            slope = (config.get("max_shift", 1.15) - config.get("base_shift", 0.5)) / (
                config.get("max_image_seq_len", 4096) - config.get("base_image_seq_len", 256)
            )
            mu = config.get("base_shift", 0.5) + slope * (image_tokens - config.get("base_image_seq_len", 256))
            scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu)
        else:
            scheduler.set_timesteps(num_steps)
        return scheduler.sigmas[:num_steps].float().numpy()

    def _sigmas(self, latents: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """Returns `sigma` (one value, or a (batch,) tensor) as a (batch,) fp32 tensor on the model's device."""
        return torch.as_tensor(sigma, dtype=torch.float32, device=self.device).expand(latents.shape[0])

    def transformer_inputs(self, latents: torch.Tensor, sigma: float | torch.Tensor, prompt: PromptEncoding) -> dict:
        """Returns the keyword arguments of one transformer forward on noisy latents at `sigma` (no CFG).

        `sigma` is one value for the batch or a (batch,) tensor.
        """
        return {
            "hidden_states": latents,
            "timestep": self._sigmas(latents, sigma) * 1000.0,
            "encoder_hidden_states": prompt.prompt_embeds,
            "pooled_projections": prompt.pooled,
            "return_dict": False,
        }

    def velocity(self, latents: torch.Tensor, sigma: float | torch.Tensor, prompt: PromptEncoding) -> torch.Tensor:
        """Returns the transformer's flow-matching prediction for noisy latents at `sigma`, in the latents' own
        (batch, channels, height, width) layout, comparable with noise − x0."""
        return self.transformer(**self.transformer_inputs(latents, sigma, prompt))[0]


class OrganismBackbone(Backbone):
    """The Shapes organism: pixel space, a word-level text encoder."""

    family = "organism"

    @property
    def vae_scale_factor(self) -> int:
        return 1

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return (2 * images - 1).to(self.device, self.dtype)  # pixel space: the image in [−1, 1] is the latent

    def prompt_tokens(self, prompts: list[str]) -> list[list[TextToken]]:
        return _token_spans(self.pipe.tokenizer, prompts, self.text_length, "word")

    def _embed(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pipe.encode_prompt(prompts)


class SD3Backbone(Backbone):
    """Stable Diffusion 3 / 3.5: CLIP-L and CLIP-G's 77 positions, then T5's (zeros without T5)."""

    family = "sd3"
    default_text_length = 256

    def text_length_of(self, attention_text: int) -> int:
        return attention_text - self.pipe.tokenizer_max_length  # CLIP's 77 positions come first

    def prompt_tokens(self, prompts: list[str]) -> list[list[TextToken]]:
        pipe = self.pipe
        clip = _token_spans(pipe.tokenizer, prompts, pipe.tokenizer_max_length, "clip")
        t5 = (
            _token_spans(pipe.tokenizer_3, prompts, self.text_length, "t5")
            if pipe.text_encoder_3 is not None
            else [[TextToken("t5", "", 0, 0)] * self.text_length for _ in prompts]
        )  # zeros stand in for T5 when absent
        return [c + t for c, t in zip(clip, t5)]

    def _embed(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompts,
            prompts,
            prompts,
            device=self.device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.text_length,
        )
        return embeds, pooled


class FluxBackbone(Backbone):
    """FLUX.1: T5's positions; latents packed 2×2 into one token, with image position ids."""

    family = "flux"
    default_text_length = 512
    patch_size_override = 2

    def prompt_tokens(self, prompts: list[str]) -> list[list[TextToken]]:
        return _token_spans(self.pipe.tokenizer_2, prompts, self.text_length, "t5")

    def _embed(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompts, prompts, device=self.device, max_sequence_length=self.text_length
        )
        return embeds, pooled

    def transformer_inputs(self, latents: torch.Tensor, sigma: float | torch.Tensor, prompt: PromptEncoding) -> dict:
        batch, channels, height, width = latents.shape
        packed = FluxPipeline._pack_latents(latents, batch, channels, height, width)
        image_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, self.device, self.dtype)
        text_ids = torch.zeros(prompt.prompt_embeds.shape[1], 3, device=self.device, dtype=self.dtype)
        guidance = (
            torch.full((batch,), 3.5, device=self.device, dtype=torch.float32)
            if self.transformer.config.guidance_embeds
            else None
        )
        return {
            "hidden_states": packed,
            "timestep": self._sigmas(latents, sigma).to(self.dtype),
            "guidance": guidance,
            "pooled_projections": prompt.pooled,
            "encoder_hidden_states": prompt.prompt_embeds,
            "txt_ids": text_ids,
            "img_ids": image_ids,
            "return_dict": False,
        }

    def velocity(self, latents: torch.Tensor, sigma: float | torch.Tensor, prompt: PromptEncoding) -> torch.Tensor:
        out = self.transformer(**self.transformer_inputs(latents, sigma, prompt))[0]
        height, width = latents.shape[-2:]
        return FluxPipeline._unpack_latents(
            out, height * self.vae_scale_factor, width * self.vae_scale_factor, self.vae_scale_factor
        )


# the pipeline classes seg4diff runs, each with its Backbone (checked in order: a subclass before its base)
BACKBONES: dict[type, type[Backbone]] = {
    StableDiffusion3Pipeline: SD3Backbone,
    FluxPipeline: FluxBackbone,
    OrganismPipeline: OrganismBackbone,
}


def backbone_from_pipeline(
    pipe: DiffusionPipeline, text_length: int | None = None, call_arguments: dict | None = None
) -> Backbone:
    """Returns a Backbone around an already-built pipeline: one of BACKBONES, or of a recorded family
    (seg4diff.backbones.recorded); `call_arguments` go to every call of the pipeline (model.call)."""
    from seg4diff.backbones.recorded import recorded_backbones

    recorded = recorded_backbones()
    for pipeline, backbone in BACKBONES.items():
        if isinstance(pipe, pipeline):
            if backbone is OrganismBackbone:
                return backbone(pipe, pipe.text_length)
            break
    else:
        backbone = next((recorded[k.__name__] for k in type(pipe).__mro__ if k.__name__ in recorded), None)
        if backbone is None:
            names = [p.__name__ for p in BACKBONES if p is not OrganismPipeline] + list(recorded)
            raise ModelLoadError(f"{type(pipe).__name__} is not a supported MM-DiT pipeline ({', '.join(names)})")
    return backbone(pipe, text_length or backbone.default_text_length, dict(call_arguments or {}))


def load_backbone(params: ModelParams, lora: str | Path | None = None) -> Backbone:
    """Returns the Backbone configured by the `model` params group, with a saved LoRA adapter applied if given."""
    pipe = load_pipeline(params)
    text_length = params.text_length
    if not params.t5:
        if not isinstance(pipe, StableDiffusion3Pipeline):
            raise ModelLoadError(
                f"model.t5 is false but {params.path} is a {type(pipe).__name__}: only SD3/SD3.5 run without T5"
            )
        text_length = text_length or pipe.tokenizer_max_length  # the authors' 77 zero rows
    backbone = backbone_from_pipeline(pipe, text_length, params.call)
    if lora is not None:
        from seg4diff.backbones.lora import load_lora

        load_lora(backbone.transformer, lora, base_model=model_digest(params))
    return backbone
