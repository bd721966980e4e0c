"""How many joint-attention layers a transformer's config.json declares, per family: read without building the model
(or importing torch), so that a layer setting out of range is refused when the settings are validated."""

from __future__ import annotations

# per FAMILIES row (seg4diff/capture/families.py): the config keys whose sum is its number of joint-attention layers
LAYER_COUNT_KEYS: dict[str, tuple[str, ...]] = {
    "SD3Transformer2DModel": ("num_layers",),
    "FluxTransformer2DModel": ("num_layers", "num_single_layers"),  # double-stream, then single-stream layers
    "Flux2Transformer2DModel": ("num_layers", "num_single_layers"),
    "Flux3Transformer2DModel": ("num_single_layers",),  # its num_layers count image-only / text-only mode blocks
    "ChromaTransformer2DModel": ("num_layers", "num_single_layers"),
    "BriaTransformer2DModel": ("num_layers", "num_single_layers"),
    "BriaFiboTransformer2DModel": ("num_layers", "num_single_layers"),
    "LongCatImageTransformer2DModel": ("num_layers", "num_single_layers"),
    "OvisImageTransformer2DModel": ("num_layers", "num_single_layers"),
    "HunyuanImageTransformer2DModel": ("num_layers", "num_single_layers"),
    "AuraFlowTransformer2DModel": ("num_mmdit_layers", "num_single_dit_layers"),
    "QwenImageTransformer2DModel": ("num_layers",),
    "NucleusMoEImageTransformer2DModel": ("num_layers",),
    "PRXTransformer2DModel": ("depth",),
    "CogView4Transformer2DModel": ("num_layers",),
    "GlmImageTransformer2DModel": ("num_layers",),
    "Lumina2Transformer2DModel": ("num_layers",),  # refiner layers are text-only or image-only
    "Krea2Transformer2DModel": ("num_layers",),
    "Ideogram4Transformer2DModel": ("num_layers",),
    "ErnieImageTransformer2DModel": ("num_layers",),
    "ZImageTransformer2DModel": ("n_layers",),
}


def declared_layer_count(config: dict) -> int | None:
    """Returns the number of joint-attention layers a transformer config declares (None: not a known family)."""
    keys = LAYER_COUNT_KEYS.get(config.get("_class_name", ""))
    if keys is None or any(key not in config for key in keys):
        return None
    return sum(int(config[key]) for key in keys)
