"""One declarative row per diffusers pipeline family whose forwards a `RecordedBackbone` records
(`seg4diff/backbones/recorded.py`): where the prompt's own tokens sit in the attention's text sequence (chat templates,
dropped prefixes, register tokens, padding), the flow's latent space (the VAE posterior mean normalised as the
pipeline's decoder expects), packing, the timestep's unit and the call's arguments. Each function says what the
pipeline does; `tests/test_recorded_backbones.py` checks every row against its pipeline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers.models.transformers.transformer_z_image import SEQ_MULTI_OF

from seg4diff.backbones import prompt_positions
from seg4diff.backbones.backbone import TextToken


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
        "flux2", "Flux2Pipeline", 512, prompt_positions.flux2_tokens, _flux2_latents,
        patch=1, latent_scale=2, pack=_flatten, unpack=_unflatten,
    ),  # guidance-distilled: one call per step, the embedded guidance the pipeline's default
    PipelineFamily(
        "qwenimage", "QwenImagePipeline", 512, prompt_positions.qwenimage_tokens, _qwenimage_latents,
        patch=2, pack=_pack2x2, unpack=_unpack2x2, uncond_free={"true_cfg_scale": 1.0}, guidance=_qwenimage_guidance,
    ),
    PipelineFamily(
        "chroma", "ChromaPipeline", 512, prompt_positions.t5_tokens, _shift_scale_latents,
        patch=2, pack=_pack2x2, unpack=_unpack2x2, uncond_free=NO_CFG,
    ),
    PipelineFamily(
        "auraflow", "AuraFlowPipeline", 256, prompt_positions.t5_tokens, _shift_scale_latents,
        patch=2, uncond_free=NO_CFG, registers=_auraflow_registers,
    ),
    PipelineFamily(
        "bria", "BriaPipeline", 128, prompt_positions.t5_tokens, _shift_scale_latents,
        patch=2, vae_scale=_bria_vae_scale, pack=_pack2x2, unpack=_unpack2x2, timestep=_scheduler_timestep,
        uncond_free=NO_CFG, guidance=_bria_guidance,
    ),
    PipelineFamily(
        "longcat", "LongCatImagePipeline", 512, prompt_positions.longcat_tokens, _shift_scale_latents,
        patch=2, pack=_pack2x2, unpack=_unpack2x2, timestep=_per_mille_in_model_dtype,
        uncond_free=NO_CFG | {"enable_prompt_rewrite": False}, guidance=_longcat_guidance,
        text_length_arg=None,  # tokenizer_max_length (512), not an argument of the call
    ),
    PipelineFamily(
        "ovisimage", "OvisImagePipeline", 256, prompt_positions.ovis_tokens, _shift_scale_latents,
        patch=2, pack=_pack2x2, unpack=_unpack2x2, uncond_free=NO_CFG,
    ),
    PipelineFamily(
        # 512: only a cap on the prompt's tokens (the call takes no text length)
        "ernieimage", "ErnieImagePipeline", 512, prompt_positions.ernie_tokens, _ernie_latents,
        patch=None, timestep=_scheduler_timestep, uncond_free=NO_CFG | {"use_pe": False}, guidance=_ernie_guidance,
        text_length_arg=None, text_input="text_bth",
    ),
    PipelineFamily(
        # 1024: a cap (the text is the batch's longest prompt, padded to a multiple of 16)
        "cogview4", "CogView4Pipeline", 1024, prompt_positions.cogview4_tokens, _scale_latents,
        patch=2, timestep=_cogview4_timestep, uncond_free=NO_CFG,
    ),
    PipelineFamily(
        "hunyuanimage", "HunyuanImagePipeline", 1000, prompt_positions.hunyuanimage_tokens, _scale_latents,
        patch=None, timestep=_scheduler_timestep, guidance=_guider_guidance,  # patch: the released 1, the tiny 2
        text_length_arg=None, registers=_hunyuanimage_glyph_positions,  # Qwen text fixed at 1000, glyph at 128
    ),
    PipelineFamily(
        "zimage", "ZImagePipeline", 512, prompt_positions.zimage_tokens, _shift_scale_latents,
        patch=2, pack=_per_sample_frames, unpack=_stack_frames, timestep=_zimage_timestep,
        uncond_free={"guidance_scale": 0.0}, guidance=_zimage_guidance,  # CFG runs whenever guidance_scale > 0
        text_input="cap_feats", text=_zimage_text, image_input="x", timestep_input="t", velocity_sign=-1.0,
    ),
    PipelineFamily(
        "lumina2", "Lumina2Pipeline", 256, prompt_positions.lumina2_tokens, _shift_scale_latents,
        patch=2, timestep=_lumina2_timestep, uncond_free=NO_CFG, text=_lumina2_text, velocity_sign=-1.0,
    ),
]  # fmt: skip
