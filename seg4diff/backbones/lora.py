"""LoRA adapters (peft) on an MM-DiT transformer: add, save as safetensors, load onto a base model."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from seg4diff.capture.families import family_of
from seg4diff.errors import ConfigError

ADAPTER = "magnet"
WEIGHTS, CONFIG = "adapter_model.safetensors", "lora_config.json"


@dataclass(frozen=True)
class LoraSpec:
    """The adapter's shape (from the finetune params group)."""

    rank: int
    alpha: int
    dropout: float
    target_modules: tuple[str, ...]


def image_stream_targets(transformer: torch.nn.Module, target_modules: tuple[str, ...]) -> str:
    """Returns peft's target regex: the named projections of the joint attention's IMAGE stream of every block
    whose image and text tokens have their own projections (the family row's `lora_layers`).

    E.g. `transformer_blocks.<i>.attn.<name>` — SD3's and SD3.5's joint blocks, FLUX's double-stream blocks (their
    text stream is add_q/k/v_proj and to_add_out, never matched). Not matched: SD3.5's image-only `attn2` (not part of
    the joint attention MAGNET supervises) and single-stream blocks (one projection for text and image tokens
    together: no image stream to adapt alone).
    """
    family = family_of(transformer)
    names = "|".join(re.escape(name) for name in target_modules)
    layers = "|".join(re.escape(name) for name in family.lora_layers)
    return rf"({layers})\.\d+\.{re.escape(family.attention)}\.({names})"


def add_lora(transformer: torch.nn.Module, spec: LoraSpec) -> list[torch.nn.Parameter]:
    """Freezes the transformer and adds the adapter on the image stream; returns the adapter's (trainable)
    parameters. A family with no layer to adapt, or a class diffusers gives no adapter support, is refused
    (ConfigError)."""
    name = type(transformer).__name__
    if not family_of(transformer).lora_layers:
        raise ConfigError(f"{name} has no joint-attention projections MAGNET's LoRA can adapt (FAMILIES row)")
    if not hasattr(transformer, "add_adapter"):
        raise ConfigError(
            f"diffusers gives {name} no adapter support (no PeftAdapterMixin): MAGNET cannot fine-tune it"
        )
    transformer.requires_grad_(False)
    transformer.add_adapter(
        LoraConfig(
            r=spec.rank,
            lora_alpha=spec.alpha,
            lora_dropout=spec.dropout,
            target_modules=image_stream_targets(transformer, spec.target_modules),
            init_lora_weights=True,
        ),
        adapter_name=ADAPTER,
    )
    return [p for name, p in transformer.named_parameters() if "lora_" in name and p.requires_grad]


def lora_state(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().contiguous().cpu()
        for k, v in get_peft_model_state_dict(transformer, adapter_name=ADAPTER).items()
    }


def set_lora_state(transformer: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        result = set_peft_model_state_dict(transformer, state, adapter_name=ADAPTER)
    except RuntimeError as error:  # size mismatches: one line, not torch's dump of every tensor
        first = str(error).split("\n")[1].strip() if "\n" in str(error) else str(error)
        raise ConfigError(
            f"adapter {source} does not fit this transformer (trained for another base model?): {first}"
        ) from None
    if getattr(result, "unexpected_keys", None):
        raise ConfigError(
            f"adapter {source} does not fit this transformer: unexpected keys {result.unexpected_keys[:3]}"
        )


def save_lora(transformer: torch.nn.Module, directory: Path, spec: LoraSpec, extra: dict | None = None) -> None:
    """Writes adapter_model.safetensors and lora_config.json (the spec, plus `extra` facts such as the expert layer)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(lora_state(transformer), directory / WEIGHTS)
    (directory / CONFIG).write_text(json.dumps({**asdict(spec), **(extra or {})}, indent=2))


def load_lora(transformer: torch.nn.Module, directory: str | Path, base_model: str | None = None) -> dict:
    """Adds the adapter saved in `directory` to a base transformer (in place); returns its config.

    `base_model`: the digest of the model being adapted (seg4diff.backbones.backbone.model_digest); an adapter that
    records
    another base model is refused in one line, before any weight is touched.
    """
    directory = Path(directory)
    if not (directory / WEIGHTS).is_file():
        raise ConfigError(f"no LoRA adapter at {directory} (expected {WEIGHTS}): run the finetune stage")
    config = json.loads((directory / CONFIG).read_text())
    trained_on = config.get("base_model")
    if base_model is not None and trained_on is not None and trained_on != base_model:
        raise ConfigError(
            f"adapter {directory} was trained on another base model (digest {trained_on}, this model.path "
            f"has {base_model}): set model.path to its base model or retrain it (dvc repro finetune)"
        )
    add_lora(transformer, LoraSpec(config["rank"], config["alpha"], config["dropout"], tuple(config["target_modules"])))
    set_lora_state(transformer, load_file(directory / WEIGHTS), str(directory))
    transformer.eval()
    return config
