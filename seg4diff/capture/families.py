"""The diffusers transformer families whose joint attention seg4diff reads and edits: one declarative row each.

seg4diff taps each layer's own attention kernel call (`seg4diff.capture.intervention`), so a row holds no model
code: where the layers are and what each stream is called, which attention module of a layer is the joint one, the
joint sequence's token order, and how one forward's image token grid (rows, columns) is read from its arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

Grid = tuple[int, int]


def _forward_argument(args: tuple, kwargs: dict, name: str, position: int):
    return kwargs.get(name, args[position] if len(args) > position else None)


def latent_grid(transformer: torch.nn.Module, args: tuple, kwargs: dict) -> Grid | None:
    """Returns the image token grid of a forward from its (batch, channel, H, W) latent and the patch size."""
    hidden = _forward_argument(args, kwargs, "hidden_states", 0)
    if hidden is None or hidden.ndim != 4:
        return None
    patch = transformer.config.patch_size
    return hidden.shape[-2] // patch, hidden.shape[-1] // patch


def image_ids_grid(transformer: torch.nn.Module, args: tuple, kwargs: dict) -> Grid | None:
    """Returns the image token grid of a forward from its image ids' (row, column) positions."""
    ids = kwargs.get("img_ids")
    if ids is None:
        return None
    ids = ids.reshape(-1, ids.shape[-1])
    return int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1


Order = Literal["image first", "text first"]


@dataclass(frozen=True)
class Family:
    """How one diffusers transformer class's joint attention is found and split."""

    name: str  # the transformer class, as diffusers names it
    order: Order  # the joint key sequence: image tokens then text tokens, or text then image
    layers: tuple[tuple[str, str], ...]  # (the transformer's layer list, its stream's name), in depth order
    token_grid: Callable[[torch.nn.Module, tuple, dict], Grid | None]
    attention: str = "attn"  # a layer's joint-attention module (SD3.5's attn2 is image-only and left alone)

    def split(self, queries: int, keys: int, n_image: int, layer: int) -> tuple[slice, slice, tuple[slice, slice]]:
        """Returns the (image, text) key slices of a kernel call with `keys` joint keys of which `n_image` are image
        tokens, and the (image, text) query rows: the same slices when every token queries, (all, None) when only the
        image tokens do."""
        if not 0 < n_image < keys:
            raise ValueError(
                f"layer {layer} ({self.name}): {keys} attention keys cannot hold the forward's {n_image} image tokens "
                "and a text"
            )
        if self.order == "image first":
            image, text = slice(0, n_image), slice(n_image, keys)
        else:
            image, text = slice(keys - n_image, keys), slice(0, keys - n_image)
        if queries == keys:
            return image, text, (image, text)
        if queries == n_image:
            return image, text, (slice(0, n_image), None)
        raise ValueError(
            f"layer {layer} ({self.name}): {queries} queries over {keys} keys are neither the joint sequence nor its "
            f"{n_image} image tokens"
        )

    def modules(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        """Returns the joint attention module of every layer, in depth order."""
        return [getattr(layer, self.attention) for layers, _ in self.layers for layer in getattr(transformer, layers)]

    def layer_names(self, transformer: torch.nn.Module) -> list[str]:
        """Returns each layer's name by stream, in depth order: "joint 9", or "double 7" … "single 0" …"""
        return [f"{stream} {i}" for layers, stream in self.layers for i in range(len(getattr(transformer, layers)))]


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("SD3Transformer2DModel", "image first", (("transformer_blocks", "joint"),), latent_grid),
        Family(
            "FluxTransformer2DModel",
            "text first",
            (("transformer_blocks", "double"), ("single_transformer_blocks", "single")),
            image_ids_grid,
        ),
    )
}


def family_of(transformer: torch.nn.Module) -> Family:
    """Returns the FAMILIES row of `transformer`'s class."""
    name = type(transformer).__name__
    if name not in FAMILIES:
        raise TypeError(
            f"seg4diff's attention hooks support {' and '.join(FAMILIES)}, not {name}: add a row to "
            "FAMILIES in seg4diff/capture/families.py"
        )
    return FAMILIES[name]


def joint_attention_modules(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """Returns the joint (image+text) attention module of every layer, in depth order: SD3/SD3.5's
    `transformer_blocks[i].attn`; FLUX's double-stream layers, then its single-stream layers."""
    return family_of(transformer).modules(transformer)


def token_grid(transformer: torch.nn.Module, args: tuple, kwargs: dict) -> Grid | None:
    """Returns the image token grid (rows, columns) of one forward call, or None if it cannot be read."""
    return family_of(transformer).token_grid(transformer, args, kwargs)


def all_layers(transformer: torch.nn.Module) -> list[int]:
    """Returns the index of every joint-attention layer of `transformer` (the default of every `layers` setting)."""
    return list(range(len(joint_attention_modules(transformer))))
