"""LoRA adapters (peft) on an MM-DiT transformer: add, save as safetensors, load onto a base model."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

ADAPTER = "magnet"
WEIGHTS, CONFIG = "adapter_model.safetensors", "lora_config.json"


@dataclass(frozen=True)
class LoraSpec:
    rank: int = 16
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")


def add_lora(transformer: torch.nn.Module, spec: LoraSpec) -> list[torch.nn.Parameter]:
    """Freezes the transformer and adds the adapter; returns the adapter's (trainable) parameters."""
    transformer.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                                       target_modules=list(spec.target_modules), init_lora_weights=True), adapter_name=ADAPTER)
    return [p for name, p in transformer.named_parameters() if "lora_" in name and p.requires_grad]


def lora_state(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(transformer, adapter_name=ADAPTER).items()}


def set_lora_state(transformer: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    result = set_peft_model_state_dict(transformer, state, adapter_name=ADAPTER)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"adapter {source} does not fit this transformer: unexpected keys {result.unexpected_keys[:3]}")


def save_lora(transformer: torch.nn.Module, directory: Path, spec: LoraSpec, extra: dict | None = None) -> None:
    """Writes adapter_model.safetensors and lora_config.json (the spec, plus `extra` facts such as the expert layer)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(lora_state(transformer), directory / WEIGHTS)
    (directory / CONFIG).write_text(json.dumps({**asdict(spec), **(extra or {})}, indent=2))


def load_lora(transformer: torch.nn.Module, directory: str | Path) -> dict:
    """Adds the adapter saved in `directory` to a base transformer (in place); returns its config."""
    directory = Path(directory)
    if not (directory / WEIGHTS).is_file():
        raise FileNotFoundError(f"no LoRA adapter at {directory} (expected {WEIGHTS}): run the finetune stage")
    config = json.loads((directory / CONFIG).read_text())
    add_lora(transformer, LoraSpec(config["rank"], config["alpha"], config["dropout"], tuple(config["target_modules"])))
    set_lora_state(transformer, load_file(directory / WEIGHTS), str(directory))
    transformer.eval()
    return config
