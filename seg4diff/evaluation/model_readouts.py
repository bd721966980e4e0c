"""Inputs of the readouts that need the model, for the samples of an attention store: ConceptAttention's concept
scores at every text-stream layer and σ, and one layer's image-token features for the linear probe.

Each image is read from the forward its stored attention came from: the store's prompt, the extraction's noise
(seed, sample index) and the store's σ. The concepts of an image are its prompted classes (the store's token
classes) and, last, the dataset's background class (unless prompted): ConceptAttention's softmax over concepts needs
a rival where an image names one class. A concept is its class name encoded alone, read at its first sub-word token
(ConceptAttention's rule; `concept_tokens: mean` averages the name's tokens instead).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import xarray as xr

from seg4diff.backbones.backbone import Backbone, pixels_of
from seg4diff.backbones.noise import sample_noise
from seg4diff.capture.concepts import concept_attention, text_stream_blocks
from seg4diff.capture.families import family_of
from seg4diff.data.attention_store import load_samples
from seg4diff.errors import DataError

ConceptTokens = Literal["first", "mean"]


@dataclass
class ModelInputs:
    """Per image: concept scores (layer, 1, σ, concept, y, x) — the prompted classes, then background — and the probe
    layer's image features (feature, y, x) at the probe σ."""

    concepts: list[np.ndarray]
    features: list[np.ndarray]


@torch.no_grad()
def concept_embeddings(backbone: Backbone, names: list[str], tokens: ConceptTokens = "first") -> torch.Tensor:
    """Returns (concept, text dim): each name encoded alone, read at its first sub-word token (or their mean)."""
    encoding = backbone.encode_prompts(names)
    rows = []
    for k, name in enumerate(names):
        positions = encoding.positions(k, 0, len(name))
        if not positions:
            raise DataError(f"concept {name!r}: the tokenizer gives it no token, so it cannot be a concept")
        picked = encoding.prompt_embeds[k, positions]
        rows.append(picked[0] if tokens == "first" else picked.mean(0))
    return torch.stack(rows)


@contextlib.contextmanager
def image_features(transformer: torch.nn.Module, layer: int) -> Iterator[dict]:
    """Records the image tokens (batch, token, width) joint-attention layer `layer` outputs, as `seen["features"]`:
    SD3's and FLUX.1's blocks (double- and single-stream) return (text, image) hidden states."""
    seen: dict = {}
    text_stream_blocks(transformer)  # refuses a family whose blocks return otherwise
    block = family_of(transformer).blocks(transformer)[layer]
    handle = block.register_forward_hook(lambda module, args, output: seen.__setitem__("features", output[1]))
    try:
        yield seen
    finally:
        handle.remove()


@torch.no_grad()
def model_inputs(
    backbone: Backbone,
    prepared: xr.Dataset,
    store: xr.Dataset,
    names: list[str],
    seed: int,
    probe: tuple[int, int],
    tokens: ConceptTokens = "first",
    batch_size: int = 16,
    progress=None,
) -> ModelInputs:
    """Returns the model readouts' inputs for every sample of `store` (sample k of the prepared split is sample k of
    the store); `names` are the dataset's class names (index 0 the background), `probe` the (layer, σ) indices of the
    probe's features. `progress` (a tqdm bar) advances by one per sample."""
    sigmas = [float(s) for s in store["sigma"].values]
    grid = (store.sizes["y"], store.sizes["x"])
    layers = len(text_stream_blocks(backbone.transformer))
    vocabulary = concept_embeddings(backbone, names, tokens).to(backbone.device)
    background = 0 if store.attrs.get("has_background", True) else None
    concepts, features = [], []
    for start in range(0, store.sizes["sample"], batch_size):
        indices = list(range(start, min(start + batch_size, store.sizes["sample"])))
        samples = load_samples(store, indices)
        prompted = [_concepts(samples.token_class.values[k], background) for k in range(len(indices))]
        count = max(len(p) for p in prompted)
        ids = torch.tensor([p + [0] * (count - len(p)) for p in prompted])
        mask = torch.tensor([[True] * len(p) + [False] * (count - len(p)) for p in prompted])
        encoding = backbone.encode_prompts([str(p) for p in samples.prompt.values])
        latents = backbone.encode_images(pixels_of(prepared["image"].values[indices]))
        noise = torch.stack([sample_noise(latents.shape[1:], seed, i) for i in indices]).to(latents)
        scores = np.zeros((len(indices), layers, 1, len(sigmas), count, *grid), dtype=np.float32)
        batch_features = None
        for s, sigma in enumerate(sigmas):
            inputs = backbone.transformer_inputs(sigma * noise + (1 - sigma) * latents, sigma, encoding)
            with (
                concept_attention(backbone.transformer, vocabulary[ids], mask.to(backbone.device)) as readout,
                image_features(backbone.transformer, probe[0]) as seen,
            ):
                backbone.transformer(**inputs)
            for layer, value in readout.scores.items():
                scores[:, layer, 0, s] = value.reshape(len(indices), count, *grid).cpu().numpy()
            if s == probe[1]:
                batch_features = seen["features"].float().transpose(1, 2).reshape(len(indices), -1, *grid).cpu()
        for k, p in enumerate(prompted):
            concepts.append(scores[k, :, :, :, : len(p)])
            features.append(batch_features[k].numpy())
        if progress is not None:
            progress.update(len(indices))
    return ModelInputs(concepts, features)


def _concepts(token_class: np.ndarray, background: int | None) -> list[int]:
    """Returns one sample's concepts: its prompted class ids in the order `load_split` gives its class axis, then the
    background class unless it is prompted or the dataset has none."""
    prompted = [int(c) for c in np.unique(token_class[token_class >= 0])]
    return prompted + ([background] if background is not None and background not in prompted else [])
