"""Training checkpoints (pretraining, fine-tuning) and the work folder that holds them: the weights plus the optimizer,
schedule and RNG state that resume a run exactly.

A checkpoint loads without running code: its tensors are in safetensors and everything else in JSON. The pickled
`state.pt` of earlier versions is refused, never read — unpickling a crafted file runs whatever it says. The work
folder carries seg4diff's marker (seg4diff.ownership); a run of other settings is moved aside inside it, not deleted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from seg4diff.backbones.lora import WEIGHTS
from seg4diff.errors import DataError
from seg4diff.ownership import MARKER, check_replaceable, is_ours, mark, remove_ours

TENSORS, VALUES = "state.safetensors", "state.json"
PICKLED = "state.pt"  # the format of earlier versions
SETTINGS = "config.json"  # the settings of the run a work folder holds
PREVIOUS = "previous-"  # runs of other settings, moved aside inside the work folder


@dataclass(frozen=True)
class WorkFolder:
    """Whose work folder: the setting that names it (in every refusal) and what its run is called."""

    setting: str
    run: str


FINETUNE = WorkFolder("finetune.work_dir", "fine-tuning")
PRETRAIN = WorkFolder("pretrain.work_dir", "pretraining")


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


def claim_work_dir(work_dir: Path, settings: str, work: WorkFolder = FINETUNE) -> str:
    """Makes `work_dir` seg4diff's work folder of `work` (fine-tuning, pretraining) for `settings` (a JSON text);
    returns one line saying what happened.

    A folder seg4diff did not write is refused (ConfigError naming work.setting, e.g. finetune.work_dir). The run of
    other settings it holds is moved aside to `previous-<hash of its settings>` inside it, never deleted (it may have
    cost hours of GPU); one moved aside earlier for these settings is moved back and resumed."""
    work_dir = Path(work_dir)
    check_replaceable(work_dir, work.setting)
    mark(work_dir, f"{work.run} work folder")
    recorded = work_dir / SETTINGS
    if recorded.is_file() and recorded.read_text() == settings:
        return f"{work.setting} {work_dir}: continuing the run of the same settings there"
    said = []
    if recorded.is_file():
        previous = _previous(work_dir, recorded.read_text())
        _move_run(work_dir, previous)
        said.append(f"held a run of other settings: moved it to {previous} (delete that to free disk)")
    earlier = _previous(work_dir, settings)
    if (earlier / SETTINGS).is_file() and (earlier / SETTINGS).read_text() == settings:
        _move_run(earlier, work_dir)
        earlier.rmdir()
        said.append(f"resuming the run of these settings moved aside earlier to {earlier}")
    else:
        recorded.write_text(settings)
        said.append("starting a new run")
    return f"{work.setting} {work_dir}: " + "; ".join(said)


def _previous(work_dir: Path, settings: str) -> Path:
    """Returns where a run of `settings` is moved aside inside `work_dir`."""
    return work_dir / f"{PREVIOUS}{hashlib.sha256(settings.encode()).hexdigest()[:16]}"


def _move_run(source: Path, target: Path) -> None:
    """Moves a run's files (not the marker, not runs moved aside) from `source` into `target`; the settings last, so
    that a move interrupted half-way is finished by the next call."""
    target.mkdir(exist_ok=True)
    entries = [p for p in source.iterdir() if p.name != MARKER and not p.name.startswith(PREVIOUS)]
    for entry in sorted(entries, key=lambda p: p.name == SETTINGS):
        entry.rename(target / entry.name)


def _one_line(error: Exception) -> str:
    """Returns the error's type and message on one line."""
    return " ".join(f"{type(error).__name__}: {error}".split())
