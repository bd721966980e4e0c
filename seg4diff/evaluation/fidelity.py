"""Generation fidelity: images from captions with any backbone, and CLIP score against their captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from seg4diff.backbones.backbone import Backbone
from seg4diff.organism.sampling import sample


@torch.no_grad()
def generate(backbone: Backbone, captions: list[str], steps: int, guidance: float, seed: int, size: int) -> np.ndarray:
    """Returns generated images (n, H, W, 3) in [0, 1]: the organism's Euler sampler, or the diffusers pipeline's
    call with the backbone's text length (the joint sequence every other stage gives the transformer: SD3 without
    T5 sees 77 CLIP + 77 zero rows, not the pipeline's default 256)."""
    if backbone.family == "organism":
        return (
            sample(backbone.pipe, captions, steps=steps, guidance=guidance, seed=seed).permute(0, 2, 3, 1).cpu().numpy()
        )
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return backbone.pipe(
        prompt=captions,
        num_inference_steps=steps,
        height=size,
        width=size,
        generator=generator,
        output_type="np",
        **backbone.generation_arguments(guidance),
    ).images


def clip_score(images: np.ndarray, captions: list[str], model_dir: str | Path) -> float:
    """Returns the mean CLIPScore, max(100·cos(image, caption), 0), with a CLIP model saved in `model_dir`."""
    return float(clip_scores(images, captions, model_dir).mean())


@torch.no_grad()
def clip_scores(images: np.ndarray, captions: list[str], model_dir: str | Path) -> np.ndarray:
    """Returns each image's CLIPScore against its caption, max(100·cos, 0), with the CLIP model in `model_dir`."""
    from transformers import CLIPModel, CLIPProcessor

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"CLIP model directory {model_dir} does not exist (evaluate.clip_model)")
    model = CLIPModel.from_pretrained(model_dir, use_safetensors=True).eval()
    processor = CLIPProcessor.from_pretrained(model_dir)
    pixels = [(np.clip(image, 0, 1) * 255).astype(np.uint8) for image in images]
    inputs = processor(text=captions, images=pixels, return_tensors="pt", padding=True, truncation=True)
    out = model(**inputs)
    cosine = (F.normalize(out.image_embeds, dim=-1) * F.normalize(out.text_embeds, dim=-1)).sum(-1)
    return (100 * cosine).clamp_min(0).cpu().numpy()
