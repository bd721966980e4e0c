"""Causal interventions on one layer's image-query → text-key attention, during any forward (a whole generation too).

    with perturb_attention(transformer, layer=2, kind="blur", blur_sigma=1.0):
        images = generate(...)

The layer's attention is computed as usual (fused kernel); only the image×text part P (image queries × text keys,
softmax over ALL joint keys) is replaced by P' and the output corrected by (P' − P)·V_text — the N×N matrix never
exists. Every perturbation keeps each image query's total mass on the text (so the image→image part is untouched):

- `blur`: each text key's map over the image queries is Gaussian-blurred (σ in tokens), as the paper does;
- `mean`: each map replaced by its spatial mean (the limit of an infinitely wide blur: where, not how much);
- `shuffle`: the text keys permuted (seeded): each query keeps its attention pattern but on the wrong words.

A perturbation is an editing intervention (`seg4diff.capture.intervention`): it stacks with captures and other
perturbations of the same layer, and a capture there records P', the attention the layer used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F

from seg4diff.capture.intervention import Intervention, JointAttention, intervene

Kind = Literal["blur", "mean", "shuffle"]
KINDS: tuple[Kind, ...] = ("blur", "mean", "shuffle")


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Returns (…, y, x) maps blurred by a separable Gaussian of `sigma` pixels (reflect padding, mass kept per map
    up to the borders)."""
    radius = max(1, int(3 * sigma + 0.5))  # scipy.ndimage.gaussian_filter's truncation at 3σ
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(maps.dtype)
    lead, (height, width) = maps.shape[:-2], maps.shape[-2:]
    x = maps.reshape(-1, 1, height, width)
    pad_y, pad_x = min(radius, height - 1), min(radius, width - 1)
    x = F.pad(x, (pad_x, pad_x, pad_y, pad_y), mode="reflect" if min(height, width) > 1 else "replicate")
    x = F.conv2d(x, kernel[radius - pad_x : radius + pad_x + 1].view(1, 1, 1, -1))
    x = F.conv2d(x, kernel[radius - pad_y : radius + pad_y + 1].view(1, 1, -1, 1))
    return x.reshape(*lead, height, width)


def perturb(
    probabilities: torch.Tensor,
    grid: tuple[int, int],
    kind: Kind,
    blur_sigma: float = 1.0,
    permutation: torch.Tensor | None = None,
) -> torch.Tensor:
    """Returns P' for P = (batch, head, image query, text key) image→text attention; each row's text mass kept."""
    if kind == "shuffle":
        if permutation is None:
            raise ValueError("shuffle needs a permutation of the text keys")
        return probabilities[..., permutation]
    batch, heads, queries, keys = probabilities.shape
    maps = probabilities.transpose(-1, -2).reshape(batch, heads, keys, *grid)  # (…, text key, y, x)
    if kind == "blur":
        changed = gaussian_blur(maps, blur_sigma)
    elif kind == "mean":
        changed = maps.mean(dim=(-2, -1), keepdim=True).expand_as(maps)
    else:
        raise ValueError(f"unknown perturbation '{kind}'; choose from {KINDS}")
    changed = changed.reshape(batch, heads, keys, queries).transpose(-1, -2)
    mass, new_mass = probabilities.sum(-1, keepdim=True), changed.sum(-1, keepdim=True)
    return changed * (mass / new_mass.clamp_min(torch.finfo(changed.dtype).tiny))


class Perturbation(Intervention):
    """An editing intervention: a layer's image→text attention replaced by a perturbed copy. `strength` sums mean
    |P' − P| per image query (L1 over the text keys) over calls, to compare perturbations' sizes."""

    edits = True

    def __init__(self, layer: int, kind: Kind, blur_sigma: float, seed: int):
        self.layer, self.kind, self.blur_sigma, self.seed = layer, kind, blur_sigma, seed
        self.permutation: torch.Tensor | None = None  # of the text keys, drawn at the first forward (its text length)
        self.grid: tuple[int, int] | None = None
        self.text_length: int | None = None  # of the forward (FLUX single-stream layers see one joint sequence)
        self.forwards = 0
        self.strength, self.calls = 0.0, 0

    def forward_started(self) -> None:
        if self.kind == "shuffle" and self.permutation is None:
            self.permutation = torch.randperm(self.text_length, generator=torch.Generator().manual_seed(self.seed))

    def __call__(self, attention: JointAttention) -> None:
        """Makes the layer use P' for the image-query × text-key part of its attention."""
        probabilities = attention.image_to_text()
        permutation = None if self.permutation is None else self.permutation.to(probabilities.device)
        delta = attention.edit_image_to_text(perturb(probabilities, self.grid, self.kind, self.blur_sigma, permutation))
        self.strength += float(delta.abs().sum(-1).mean())
        self.calls += 1


@contextlib.contextmanager
def perturb_attention(
    transformer: torch.nn.Module, layer: int, kind: Kind, blur_sigma: float = 1.0, seed: int = 0
) -> Iterator[Perturbation]:
    """Perturbs layer `layer`'s image→text attention for every forward inside the context; takes it off on exit.
    SD3/SD3.5 layers, and FLUX's double- then single-stream layers (numbered as `joint_attention_modules`)."""
    with intervene(transformer, [layer], Perturbation(layer, kind, blur_sigma, seed)) as perturbation:
        yield perturbation
