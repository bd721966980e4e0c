"""Training checkpoints (pretraining, fine-tuning) and the work folder that holds them: the weights plus the optimizer,
schedule and RNG state that resume a run exactly.

A checkpoint loads without running code: its tensors are in safetensors and everything else in JSON. The pickled
`state.pt` of earlier versions is refused, never read — unpickling a crafted file runs whatever it says. The work
folder carries seg4diff's marker (seg4diff.ownership); a run of other settings is moved aside inside it, not deleted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from seg4diff.backbones.lora import WEIGHTS
from seg4diff.errors import DataError
from seg4diff.ownership import is_ours, mark, remove_ours
from seg4diff.work_folder import WorkFolder, claim_work_dir  # noqa: F401 (claim_work_dir: used with checkpoints)

TENSORS, VALUES = "state.safetensors", "state.json"
PICKLED = "state.pt"  # the format of earlier versions


FINETUNE = WorkFolder("finetune.work_dir", "fine-tuning")
PRETRAIN = WorkFolder("pretrain.work_dir", "pretraining")


def resume_state(step: int, optimizer, scheduler, generator: torch.Generator) -> dict:
    """Returns what every training run's checkpoint holds to resume exactly: the step, optimizer and schedule state,
    the run's generator and torch's global RNG (a run adds its own logs)."""
    return {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
    }


def save_state(directory: Path, state: dict) -> None:
    """Writes `state` as safetensors + JSON: its tensors (e.g. generator, torch_rng) and the optimizer's tensors in
    safetensors, the rest (step, scheduler, logs: JSON values) in JSON."""
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    optimizer_values = {}
    for index, entries in state["optimizer"]["state"].items():
        optimizer_values[str(index)] = {}
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                optimizer_values[str(index)][name] = value
    values = {key: value for key, value in state.items() if key != "optimizer" and key not in tensors}
    values["optimizer"] = {"param_groups": state["optimizer"]["param_groups"], "state": optimizer_values}
    save_file(tensors, Path(directory) / TENSORS)
    (Path(directory) / VALUES).write_text(json.dumps(values))


def load_state(directory: Path, work: WorkFolder = FINETUNE) -> dict:
    """Returns the state save_state wrote in `directory`; raises DataError, in one line naming the file, otherwise."""
    directory = Path(directory)
    if (directory / PICKLED).exists():
        raise DataError(
            f"{directory / PICKLED}: a checkpoint in the old pickled format, which seg4diff no longer reads "
            f"(unpickling a file can run code): delete {directory.parent} to start this {work.run} over"
        )
    try:
        values = json.loads((directory / VALUES).read_text())
        tensors = load_file(directory / TENSORS)
        optimizer_state = {int(index): dict(entries) for index, entries in values["optimizer"]["state"].items()}
        for key, tensor in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                optimizer_state[int(index)][name] = tensor
        # JSON has no tuples; torch's optimizers keep pairs such as AdamW's betas as tuples
        groups = [
            {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()}
            for group in values["optimizer"]["param_groups"]
        ]
        values["optimizer"] = {"state": optimizer_state, "param_groups": groups}
        return {**values, **{key: tensor for key, tensor in tensors.items() if not key.startswith("optimizer.")}}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError) as error:
        raise DataError(
            f"{directory}: not a readable seg4diff checkpoint ({_one_line(error)}): delete {directory.parent} to start "
            f"this {work.run} over"
        ) from None


def save_checkpoint(
    work_dir: Path, state: dict, write_weights: Callable[[Path], None], work: WorkFolder = FINETUNE
) -> None:
    """Writes checkpoint-<step> (the weights `write_weights` writes into a folder, then the state) atomically — to a
    temp folder, then renamed — and removes the older ones."""
    work_dir = Path(work_dir)
    tmp = work_dir / f".tmp-{state['step']:06d}"
    remove_ours(tmp, work.setting)  # a leftover of an interrupted save
    mark(tmp, f"{work.run} checkpoint")
    write_weights(tmp)
    save_state(tmp, state)
    tmp.rename(work_dir / f"checkpoint-{state['step']:06d}")
    for old in checkpoints(work_dir)[:-1]:
        remove_ours(old, work.setting)


def load_checkpoint(checkpoint: Path) -> dict:
    """Returns the state saved in a fine-tuning `checkpoint` (load_state) with its adapter weights under "adapter"."""
    state = load_state(checkpoint)
    try:
        return {**state, "adapter": load_file(Path(checkpoint) / WEIGHTS)}
    except (OSError, SafetensorError) as error:
        raise DataError(
            f"{Path(checkpoint) / WEIGHTS}: unreadable adapter ({_one_line(error)}): delete {Path(checkpoint).parent} "
            "to start this fine-tuning over"
        ) from None


def checkpoints(work_dir: Path) -> list[Path]:
    """Returns the checkpoints seg4diff wrote in `work_dir`, oldest first (other folders are neither read nor
    deleted)."""
    found = Path(work_dir).glob("checkpoint-" + "[0-9]" * 6)
    return sorted(path for path in found if path.is_dir() and is_ours(path))


def latest_checkpoint(work_dir: Path) -> Path | None:
    """Returns the newest checkpoint in `work_dir`, None when there is none."""
    found = checkpoints(work_dir)
    return found[-1] if found else None


def _one_line(error: Exception) -> str:
    """Returns the error's type and message on one line."""
    return " ".join(f"{type(error).__name__}: {error}".split())
