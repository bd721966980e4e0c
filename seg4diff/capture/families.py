"""The diffusers transformer families whose joint attention seg4diff reads and edits: one declarative row each.

seg4diff taps each layer's own attention kernel call (`seg4diff.capture.intervention`), so a row holds no model
code: where the layers are and what each stream is called, which attention module of a layer is the joint one, the
joint sequence's token order, and how one forward's image token grid (rows, columns) is read from its arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers.models.transformers.transformer_ideogram4 import OUTPUT_IMAGE_INDICATOR
from diffusers.models.transformers.transformer_z_image import SEQ_MULTI_OF

Grid = tuple[int, int]


def forward_arguments(transformer: torch.nn.Module, args: tuple, kwargs: dict) -> dict:
    """Returns a transformer call's arguments by name (AuraFlow's pipeline passes the image tokens positionally)."""
    return dict(inspect.signature(transformer.forward).bind_partial(*args, **kwargs).arguments)


def _forward_argument(args: tuple, kwargs: dict, name: str, position: int, default=None):
    """Returns a call's argument `name` (keyword, else the positional one at `position`, else `default`)."""
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else default


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


def distinct_ids_grid(transformer: torch.nn.Module, args: tuple, kwargs: dict) -> Grid | None:
    """Returns the image token grid of a forward as the number of distinct row and column positions in its image ids
    (columns 1 and 2 of `img_ids`), or None without them: FLUX.3 scales the positions (by 0.5) and LongCat-Image
    offsets them (by the tokenizer length), so the largest position is not the grid size."""
    ids = kwargs.get("img_ids")
    if ids is None:
        return None
    ids = ids.reshape(-1, ids.shape[-1])
    return len(torch.unique(ids[:, 1])), len(torch.unique(ids[:, 2]))


def img_shapes_grid(transformer: torch.nn.Module, args: tuple, kwargs: dict) -> Grid | None:
    """Returns the image token grid (height, width) of a forward from its `img_shapes`, or None when it cannot be told.

    `img_shapes` holds one entry per sample: a (frame, height, width) tuple (NucleusMoE-Image) or a list of them, one
    per image of the sequence (Qwen-Image). Only one single-frame image shared by the whole batch is a grid: with
    condition images (Qwen-Image-Edit) or layers (Qwen-Image-Layered) the image tokens are several grids."""
    shapes = kwargs.get("img_shapes")
    if not shapes:
        return None
    per_sample = [[shape] if isinstance(shape, tuple) else list(shape) for shape in shapes]
    if any(images != per_sample[0] for images in per_sample) or len(per_sample[0]) != 1:
        return None
    frames, height, width = per_sample[0][0]
    return (int(height), int(width)) if frames == 1 else None


def patch_tuple_grid(transformer: torch.nn.Module, args: tuple, kwargs: dict) -> Grid | None:
    """Returns the image token grid of a forward from its (batch, channel, H, W) latent and the config's (ph, pw)
    patch size (HunyuanImage-2.1), or None for any other latent."""
    hidden = _forward_argument(args, kwargs, "hidden_states", 0)
    patch = transformer.config.patch_size
    if hidden is None or hidden.ndim != 4 or len(patch) != 2:
        return None
    return hidden.shape[-2] // patch[0], hidden.shape[-1] // patch[1]


def zimage_grid(transformer: torch.nn.Module, args: tuple, kwargs: dict) -> Grid | None:
    """Returns the image token grid of a Z-Image forward from its per-sample (C, F, H, W) latents `x` and
    `patch_size`, or None where the joint sequence is not [image tokens, caption]: omni mode (nested lists, caption
    first), samples of different sizes, several frames, or a token count that is not a multiple of SEQ_MULTI_OF (32),
    whose padding tokens would sit between the image and the caption."""
    latents = _forward_argument(args, kwargs, "x", 0)
    if not latents or not all(isinstance(x, torch.Tensor) and x.ndim == 4 for x in latents):
        return None
    if any(x.shape[1:] != latents[0].shape[1:] for x in latents):
        return None
    patch = _forward_argument(args, kwargs, "patch_size", 7, 2)
    frame_patch = _forward_argument(args, kwargs, "f_patch_size", 8, 1)
    frames, height, width = latents[0].shape[1:]
    rows, cols = height // patch, width // patch
    if frames // frame_patch != 1 or (rows * cols) % SEQ_MULTI_OF:
        return None
    return rows, cols


def lumina2_grid(transformer: torch.nn.Module, args: tuple, kwargs: dict) -> Grid | None:
    """Returns the latent grid of a Lumina 2 forward, or None when its captions' valid lengths differ: each sample's
    sequence is then [its caption, image, padding], so the image tokens do not sit at one place across the batch."""
    mask = _forward_argument(args, kwargs, "encoder_attention_mask", 3)
    if mask is None or len(set(mask.sum(dim=1).tolist())) > 1:
        return None
    return latent_grid(transformer, args, kwargs)


def position_ids_grid(transformer: torch.nn.Module, args: tuple, kwargs: dict) -> Grid | None:
    """Returns the image token grid of a Krea 2 forward from the (t, h, w) position ids of its packed [text, image]
    sequence: the last `hidden_states.shape[1]` rows are the image tokens."""
    hidden, ids = (
        _forward_argument(args, kwargs, "hidden_states", 0),
        _forward_argument(args, kwargs, "position_ids", 3),
    )
    if hidden is None or ids is None or hidden.ndim != 3:
        return None
    image = ids[-hidden.shape[1] :]
    return int(image[:, 1].max()) + 1, int(image[:, 2].max()) + 1


def indicator_grid(transformer: torch.nn.Module, args: tuple, kwargs: dict) -> Grid | None:
    """Returns the image token grid of an Ideogram 4 forward from the (t, h, w) position ids of the tokens its
    `indicator` marks as output image; None when they are not the last tokens of every sample (the pipeline's layout
    is [left-pad][text][image]) or when the forward has no text (the image-only unconditional pass)."""
    ids, indicator = _forward_argument(args, kwargs, "position_ids", 3), _forward_argument(args, kwargs, "indicator", 5)
    if ids is None or indicator is None:
        return None
    image = indicator == OUTPUT_IMAGE_INDICATOR
    n_image = int(image[0].sum())
    if not 0 < n_image < image.shape[1] or not image[:, -n_image:].all() or image[:, :-n_image].any():
        return None
    rows, cols = ids[0, -n_image:, 1], ids[0, -n_image:, 2]
    return int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1


Order = Literal["image first", "text first"]


@dataclass(frozen=True)
class Family:
    """How one diffusers transformer class's joint attention is found and split."""

    name: str  # the transformer class, as diffusers names it
    order: Order  # the joint key sequence: image tokens then text tokens, or text then image
    layers: tuple[tuple[str, str], ...]  # (the transformer's layer list, its stream's name), in depth order
    token_grid: Callable[[torch.nn.Module, tuple, dict], Grid | None]
    attention: str = "attn"  # a layer's joint-attention module (SD3.5's attn2 is image-only and left alone)
    # the layer lists whose joint-attention projections MAGNET's LoRA adapts: those that project image tokens on
    # their own; where no layer does, those shared by text and image tokens (`lora_shared`: the adapter then changes
    # the text tokens too); () where none can be adapted
    lora_layers: tuple[str, ...] = ("transformer_blocks",)
    lora_shared: bool = False
    text_input: str = "encoder_hidden_states"  # the forward's argument holding the prompt embeddings

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

    def blocks(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        """Returns every layer (the transformer block holding a joint attention module), in depth order."""
        return [layer for layers, _ in self.layers for layer in getattr(transformer, layers)]

    def modules(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        """Returns the joint attention module of every layer, in depth order."""
        return [getattr(layer, self.attention) for layer in self.blocks(transformer)]

    def layer_names(self, transformer: torch.nn.Module) -> list[str]:
        """Returns each layer's name by stream, in depth order: "joint 9", or "double 7" … "single 0" …"""
        return [f"{stream} {i}" for layers, stream in self.layers for i in range(len(getattr(transformer, layers)))]


JOINT = (("transformer_blocks", "joint"),)
DOUBLE_SINGLE = (("transformer_blocks", "double"), ("single_transformer_blocks", "single"))
SINGLE_LAYERS = ("single_transformer_blocks",)
SINGLE = ((SINGLE_LAYERS[0], "single"),)
LAYERS = (("layers", "single"),)

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        # image and text projected apart in every joint layer
        Family("SD3Transformer2DModel", "image first", JOINT, latent_grid),
        Family("QwenImageTransformer2DModel", "text first", JOINT, img_shapes_grid),
        Family("NucleusMoEImageTransformer2DModel", "image first", JOINT, img_shapes_grid),  # image queries only
        # double-stream layers (image and text projected apart), then single-stream ones (projected together)
        Family("FluxTransformer2DModel", "text first", DOUBLE_SINGLE, image_ids_grid),
        Family("Flux2Transformer2DModel", "text first", DOUBLE_SINGLE, image_ids_grid),
        Family("ChromaTransformer2DModel", "text first", DOUBLE_SINGLE, image_ids_grid),
        Family("BriaTransformer2DModel", "text first", DOUBLE_SINGLE, image_ids_grid),
        Family("BriaFiboTransformer2DModel", "text first", DOUBLE_SINGLE, image_ids_grid),
        Family("LongCatImageTransformer2DModel", "text first", DOUBLE_SINGLE, distinct_ids_grid),
        Family("OvisImageTransformer2DModel", "text first", DOUBLE_SINGLE, image_ids_grid),
        Family("HunyuanImageTransformer2DModel", "image first", DOUBLE_SINGLE, patch_tuple_grid),
        Family(
            "AuraFlowTransformer2DModel",
            "text first",
            (("joint_transformer_blocks", "double"), ("single_transformer_blocks", "single")),
            latent_grid,
            lora_layers=("joint_transformer_blocks",),
        ),
        # PRX: image queries only, image projected apart; diffusers gives it no adapter support
        Family("PRXTransformer2DModel", "text first", (("blocks", "joint"),), latent_grid, "attention", ("blocks",)),
        # one projection for text and image tokens in every joint layer: MAGNET's LoRA changes the text tokens too
        Family(
            "Flux3Transformer2DModel",
            "text first",
            SINGLE,
            distinct_ids_grid,
            lora_layers=SINGLE_LAYERS,
            lora_shared=True,
        ),
        Family("CogView4Transformer2DModel", "text first", JOINT, latent_grid, "attn1", lora_shared=True),
        Family("GlmImageTransformer2DModel", "text first", JOINT, latent_grid, "attn1", lora_shared=True),
        Family(
            "Lumina2Transformer2DModel",
            "text first",
            LAYERS,
            lumina2_grid,
            lora_layers=("layers",),
            lora_shared=True,
        ),
        Family(
            "Krea2Transformer2DModel",
            "text first",
            (("transformer_blocks", "single"),),
            position_ids_grid,
            lora_shared=True,
        ),
        Family("Ideogram4Transformer2DModel", "text first", LAYERS, indicator_grid, "attention", ("layers",), True),
        Family(
            "ErnieImageTransformer2DModel",
            "image first",
            LAYERS,
            latent_grid,
            "self_attention",
            ("layers",),
            True,
            "text_bth",
        ),
        Family(
            "ZImageTransformer2DModel", "image first", LAYERS, zimage_grid, "attention", ("layers",), True, "cap_feats"
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


def layer_names(transformer: torch.nn.Module) -> list[str]:
    """Returns each joint-attention layer's name by stream ("joint 9"; FLUX: "double 7" … "single 12"), in depth
    order."""
    return family_of(transformer).layer_names(transformer)


def all_layers(transformer: torch.nn.Module) -> list[int]:
    """Returns the index of every joint-attention layer of `transformer` (the default of every `layers` setting)."""
    return list(range(len(joint_attention_modules(transformer))))
