"""Causal interventions on one block's image-query → text-key attention, during any forward (a whole generation too).

    with perturb_attention(transformer, layer=2, kind="blur", blur_sigma=1.0):
        images = generate(...)

The block's attention is computed as usual (fused kernel); only the image×text part P (image queries × text keys,
softmax over ALL joint keys) is replaced by P' and the output corrected by (P' − P)·V_text — the N×N matrix never
exists. Every perturbation keeps each image query's total mass on the text (so the image→image part is untouched):

- `blur`: each text key's map over the image queries is Gaussian-blurred (σ in tokens), as the paper does;
- `mean`: each map replaced by its spatial mean (the limit of an infinitely wide blur: where, not how much);
- `shuffle`: the text keys permuted (seeded): each query keeps its attention pattern but on the wrong words.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F

from seg4diff.attention import (_token_grid, attention_with_lse, flux_joint_output, flux_joint_qkv, joint_attention_modules,
                                sd3_joint_output, sd3_joint_qkv)

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
    x = F.conv2d(x, kernel[radius - pad_x: radius + pad_x + 1].view(1, 1, 1, -1))
    x = F.conv2d(x, kernel[radius - pad_y: radius + pad_y + 1].view(1, 1, -1, 1))
    return x.reshape(*lead, height, width)


def perturb(probabilities: torch.Tensor, grid: tuple[int, int], kind: Kind, blur_sigma: float = 1.0,
            permutation: torch.Tensor | None = None) -> torch.Tensor:
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


class PerturbProcessor:
    """A block's stock attention processor whose image→text attention is replaced by a perturbed copy; `strength`
    sums mean |P' − P| per image query (L1 over the text keys) over calls, to compare perturbations' sizes."""

    def __init__(self, layer: int, kind: Kind, blur_sigma: float, permutation: torch.Tensor | None):
        self.layer, self.kind, self.blur_sigma, self.permutation = layer, kind, blur_sigma, permutation
        self.grid: tuple[int, int] | None = None
        self.text_length: int | None = None  # of the forward (FLUX single-stream blocks see one joint sequence)
        self.strength, self.calls = 0.0, 0

    def attention(self, query, key, value, image: slice, text: slice) -> torch.Tensor:
        """Returns the joint attention output (batch, head, query, dim) with the image-query × text-key part perturbed."""
        scale = 1 / math.sqrt(query.shape[-1])
        out, lse = attention_with_lse(query, key, value, scale)
        logits = torch.matmul(query[:, :, image].float(), key[:, :, text].float().transpose(-1, -2)) * scale
        probabilities = torch.exp(logits - lse[:, :, image, None].float())
        permutation = None if self.permutation is None else self.permutation.to(probabilities.device)
        delta = perturb(probabilities, self.grid, self.kind, self.blur_sigma, permutation) - probabilities
        self.strength += float(delta.abs().sum(-1).mean())
        self.calls += 1
        out = out.clone()
        out[:, :, image] += torch.matmul(delta, value[:, :, text].float()).to(out.dtype)
        return out


class SD3PerturbProcessor(PerturbProcessor):
    """JointAttnProcessor2_0 (SD3, SD3.5), joint order [image, text], perturbed."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        query, key, value = sd3_joint_qkv(attn, hidden_states, encoder_hidden_states, self.layer)
        n_image = hidden_states.shape[1]
        out = self.attention(query, key, value, slice(0, n_image), slice(n_image, None))
        return sd3_joint_output(attn, out, n_image, query.dtype)


class FluxPerturbProcessor(PerturbProcessor):
    """FluxAttnProcessor (double- and single-stream blocks), joint order [text, image], perturbed."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        query, key, value, double_stream = flux_joint_qkv(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        n_text = encoder_hidden_states.shape[1] if double_stream else self.text_length
        out = self.attention(query, key, value, slice(n_text, None), slice(0, n_text))
        return flux_joint_output(attn, out, n_text, double_stream, query.dtype)


PROCESSORS = {"SD3Transformer2DModel": SD3PerturbProcessor, "FluxTransformer2DModel": FluxPerturbProcessor}


@contextlib.contextmanager
def perturb_attention(transformer: torch.nn.Module, layer: int, kind: Kind, blur_sigma: float = 1.0,
                      seed: int = 0) -> Iterator[PerturbProcessor]:
    """Perturbs block `layer`'s image→text attention for every forward inside the context; restores it on exit.
    SD3/SD3.5 blocks, and FLUX's double- then single-stream blocks (numbered as `joint_attention_modules`)."""
    name = type(transformer).__name__
    if name not in PROCESSORS:
        raise TypeError(f"attention perturbation supports {' and '.join(PROCESSORS)}, not {name}")
    modules = joint_attention_modules(transformer)
    if not 0 <= layer < len(modules):
        raise IndexError(f"block {layer} out of range: the transformer has {len(modules)} joint-attention blocks")
    processor = PROCESSORS[name](layer, kind, blur_sigma, None)  # the permutation: at the first call (text length)

    def note_call(module, args, kwargs):
        processor.grid = _token_grid(module, kwargs, args)
        text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        processor.text_length = text.shape[1]
        if kind == "shuffle" and processor.permutation is None:
            processor.permutation = torch.randperm(text.shape[1], generator=torch.Generator().manual_seed(seed))

    original = modules[layer].processor
    hook = transformer.register_forward_pre_hook(note_call, with_kwargs=True)
    try:
        modules[layer].set_processor(processor)
        yield processor
    finally:
        hook.remove()
        modules[layer].set_processor(original)
