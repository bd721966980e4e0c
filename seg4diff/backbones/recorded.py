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

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from seg4diff.backbones.backbone import Backbone, PromptEncoding, TextToken
from seg4diff.backbones.pipeline_families import PIPELINE_FAMILIES, PipelineFamily
from seg4diff.capture.families import forward_arguments


class _Recorded(Exception):  # noqa: N818 (a control-flow signal, not an error)
    def __init__(self, kwargs: dict):
        self.kwargs = kwargs


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
        patch = self.row.patch or self.transformer.config.patch_size
        return patch[0] if isinstance(patch, (tuple, list)) else patch  # HunyuanImage's config: (2, 2)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent side of the flow's latent space (FLUX.2's 2×2 patchified latents: twice the VAE's)."""
        return self.row.vae_scale(self.pipe) * self.row.latent_scale

    def text_length_of(self, attention_text: int) -> int:
        return attention_text - self.row.registers(self.transformer)

    def text_length_arguments(self) -> dict:
        """Returns the call's argument giving this backbone's text length (none where the pipeline fixes it)."""
        return {self.row.text_length_arg: self.text_length} if self.row.text_length_arg else {}

    def generation_arguments(self, guidance: float) -> dict:
        return self.text_length_arguments() | self.row.guidance(guidance) | self.call_arguments

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
                prompt=list(prompts),  # Z-Image templates the list it is given in place
                height=height,
                width=width,
                num_inference_steps=steps,
                output_type="latent",
                generator=torch.Generator().manual_seed(0),
                **self.text_length_arguments(),
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
        text = self.text_of(encoding.inputs_at(side, side))
        attention_text = text.shape[1] + self.row.registers(self.transformer)
        if attention_text != len(tokens[0]):
            raise RuntimeError(
                f"{self.row.pipeline} gives its transformer {attention_text} text positions but the tokenizer "
                f"gives {len(tokens[0])}"
            )
        encoding.prompt_embeds = text
        return encoding

    def text_of(self, arguments: dict) -> torch.Tensor:
        """Returns the (batch, text position, dim) text of a transformer call's arguments, as its attention holds it
        (Z-Image's per-caption list padded, Lumina 2's padding past the longest caption cut)."""
        return self.row.text(arguments) if self.row.text else arguments[self.row.text_input]

    def timesteps(self, sigmas: torch.Tensor, image_tokens: int) -> torch.Tensor:
        """Returns the timestep the pipeline gives its transformer at each σ (fp32) for `image_tokens` image tokens."""
        return self.row.timestep(self.pipe, sigmas, image_tokens)

    def transformer_inputs(self, latents: torch.Tensor, sigma: float | torch.Tensor, prompt: PromptEncoding) -> dict:
        if not isinstance(prompt, RecordedPrompt):
            raise TypeError(f"{self.row.pipeline}'s forwards need an encoding from its own encode_prompts")
        height, width = (side * self.vae_scale_factor for side in latents.shape[-2:])
        recorded = prompt.inputs_at(height, width)
        tokens = latents.shape[-2] * latents.shape[-1] // self.patch_size**2
        image, time = self.row.image_input, self.row.timestep_input
        timestep = self.timesteps(self._sigmas(latents, sigma), tokens).to(recorded[time].dtype)
        return recorded | {image: self.row.pack(latents), time: timestep, "return_dict": False}

    def velocity(self, latents: torch.Tensor, sigma: float | torch.Tensor, prompt: PromptEncoding) -> torch.Tensor:
        out = self.transformer(**self.transformer_inputs(latents, sigma, prompt))[0]
        if torch.is_tensor(out):  # tokens past the image's (reference images) cut as the pipeline cuts them
            out = out[:, : self.row.pack(latents).shape[1]]
        return self.row.velocity_sign * self.row.unpack(out, latents.shape)


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
