"""Checks of the settings, per stage, run before a stage loads anything, each problem named in one line: across
fields, and against what is on disk and on the machine (the dataset's folder and splits, the model's layer count,
the device)."""

from __future__ import annotations

import json
from pathlib import Path

from seg4diff.capture.layer_count import declared_layer_count
from seg4diff.config.params import ModelParams, Params
from seg4diff.data.partition import source_split
from seg4diff.errors import ConfigError

MODEL_STAGES = {
    "pretrain",
    "extract",
    "causal",
    "explore",
    "finetune",
    "evaluate",
    "readouts",
}  # they put a model on model.device
SHAPES_SPLITS = ("train", "val", "test")


def _stage_problems(params: Params, stage: str) -> list[str]:
    """The cross-field problems of the settings for `stage`, each a short phrase (none: it can run)."""
    prepared = params.prepare.prepared
    reads = {  # the prepared splits each stage reads, by the setting that names them
        "pretrain": {"pretrain (its train split)": "train", "pretrain (its val split)": "val"},
        "extract": {"extract.split": params.extract.split},
        "causal": {"causal.split": params.causal.split},
        "finetune": {"finetune.split": params.finetune.split, "finetune.val_split": params.finetune.val_split},
        "evaluate": {"evaluate.split": params.evaluate.split, "evaluate.val_split": params.evaluate.val_split},
        "readouts": {"readouts.split": params.readouts.split, "extract.split": params.extract.split},
    }.get(stage, {})
    problems = [
        f"{key} reads split '{split}', which prepare does not prepare (it prepares {prepared})"
        for key, split in reads.items()
        if split not in prepared
    ]
    if stage in REPORTED_BY:
        problems += protocol_problems(params, stage)
    problems += caption_problems(params, stage)
    stored = params.extract.sigmas  # None: resolved from the schedule at extraction, checked there
    if stage == "score" and stored is not None and params.score.sigmas is not None:
        problems += [
            f"score.sigmas {missing} are not among extract.sigmas {stored}"
            for missing in [sorted(set(params.score.sigmas) - set(stored))]
            if missing
        ]
    if stage == "select" and stored is not None and params.select.force_sigma is not None:
        scored = params.score.sigmas if params.score.sigmas is not None else stored
        if params.select.force_sigma not in scored:
            problems.append(f"select.force_sigma {params.select.force_sigma} is not a scored sigma {scored}")
    return problems + _input_problems(params, stage)


REPORTED_BY = ("evaluate", "causal", "readouts")  # the stages that report numbers, each on its `<stage>.split`


def protocol_problems(params: Params, stage: str) -> list[str]:
    """The selection rule: a stage that reports numbers never reports them on a split where a choice was made (the
    expert block and σ on extract.split's store, thresholds and the predictor on evaluate.val_split, the fine-tuned
    checkpoint on finetune.val_split). Benchmarks with one split divide it: prepare.partition."""
    chosen_on = {
        "extract.split (the expert block and σ are chosen on its store)": params.extract.split,
        "evaluate.val_split (thresholds and the predictor)": params.evaluate.val_split,
        "finetune.val_split (the fine-tuned checkpoint)": params.finetune.val_split,
    }
    reported = getattr(params, stage).split
    return [
        f"{stage}.split '{reported}' is where {choice} is made: report on other images (the organism: test; "
        f"one-split benchmarks: prepare.partition {{{reported}: 0.2}}, choices on {reported}-select, numbers on "
        f"{reported}-report)"
        for choice, split in chosen_on.items()
        if split == reported
    ]


def caption_problems(params: Params, stage: str) -> list[str]:
    """Captions are optional (prepare runs without them); a stage that needs them refuses here, before it starts,
    when the settings and files alone show that its split has none."""
    p = params
    needs = {  # stage → (whether it needs captions, what needs them, of which split, what would run instead)
        "extract": (
            p.extract.prompt == "caption",
            "extract.prompt 'caption'",
            p.extract.split,
            "set extract.prompt: gt_classes",
        ),
        "causal": (
            True,
            "the causal stage (it generates from captions)",
            p.causal.split,
            "leave causal out (--stages)",
        ),
        "evaluate": (
            p.evaluate.generation_samples > 0,
            "evaluate.generation_samples > 0 (generation fidelity)",
            p.evaluate.split,
            "set evaluate.generation_samples: 0",
        ),
        "finetune": (
            p.finetune.mode == "caption",
            "finetune.mode 'caption'",
            p.finetune.split,
            "set finetune.mode: gt_classes",
        ),
    }
    needed, needed_by, split, instead = needs.get(stage, (False, "", "", ""))
    why = missing_captions(params, split) if needed else None
    return [f"{needed_by} needs the captions of split '{split}', but {why}: give the file or {instead}"] if why else []


def missing_captions(params: Params, split: str) -> str | None:
    """Returns why `split` will have no captions, judged from the settings and files alone; None when it has them or
    may (Shapes always does; COCO image records may carry their own)."""
    data = params.data
    if data.source == "shapes":
        return None
    source_name, _ = source_split(split, params.prepare.partition)
    entry = getattr(data, data.source).splits.get(source_name)
    if entry is None:
        return None  # an unconfigured split: the data checks name it
    setting = f"data.{data.source}.splits.{source_name}.captions"
    if entry.captions is None:
        return None if data.source == "coco" else f"{setting} is not set"
    path = Path(data.root).expanduser() / entry.captions
    return None if path.is_file() else f"{setting} {path} does not exist"


def _input_problems(params: Params, stage: str) -> list[str]:
    """The problems of the settings against the files and the machine, for `stage`."""
    problems = []
    if stage == "prepare":
        problems += _data_problems(params)
    if stage in MODEL_STAGES:
        problems += _device_problems(params.model)
    layer_settings = {
        "extract": {"extract.layers": params.extract.layers},
        "causal": {"causal.layers": params.causal.layers},
        "select": {"select.force_layer": None if params.select.force_layer is None else [params.select.force_layer]},
    }.get(stage, {})
    layer_settings = {key: value for key, value in layer_settings.items() if value}
    if layer_settings:
        count = model_layer_count(params.model)
        stored = params.extract.layers
        for key, layers in layer_settings.items():
            if count is not None and (bad := [x for x in layers if not 0 <= x < count]):
                problems.append(f"{key} {bad} outside the model's layers 0…{count - 1} ({params.model.path})")
            elif key != "extract.layers" and stored is not None and (bad := sorted(set(layers) - set(stored))):
                problems.append(f"{key} {bad} are not among the extracted extract.layers {stored}")
    return problems


def _data_problems(params: Params) -> list[str]:
    """The prepare stage's problems: a dataset folder that is not there, splits its source does not configure."""
    data, splits = params.data, params.prepare.splits
    if data.source == "shapes":  # generated under data.root by prepare itself
        unknown = [s for s in splits if s not in SHAPES_SPLITS]
        return [f"prepare.splits {unknown}: Shapes has only the splits {list(SHAPES_SPLITS)}"] if unknown else []
    root = Path(data.root).expanduser()
    if not root.is_dir():
        return [f"data.root {data.root} does not exist (the {data.source} dataset's folder)"]
    configured = getattr(data, data.source).splits
    unknown = [s for s in splits if s not in configured]
    if unknown:
        return [f"prepare.splits {unknown} are not configured in data.{data.source}.splits (it has {list(configured)})"]
    problems = []
    for split in splits:
        entry = configured[split]
        files = {"annotations": getattr(entry, "annotations", None), "images": entry.images}
        files["labels"] = getattr(entry, "labels", None)
        for name, relative in files.items():
            if relative is not None and not (root / relative).exists():
                problems.append(f"data.{data.source}.splits.{split}.{name}: {root / relative} does not exist")
    return problems


def _device_problems(model: ModelParams) -> list[str]:
    """A device this machine does not have (a GPU preset on a CPU-only machine)."""
    import torch

    kind = model.device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        return [f"model.device is '{model.device}' but this machine has no CUDA device (set model.device: cpu)"]
    if kind == "mps" and not torch.backends.mps.is_available():
        return [f"model.device is '{model.device}' but MPS is not available here (set model.device: cpu)"]
    return []


def model_layer_count(model: ModelParams) -> int | None:
    """Returns how many joint-attention layers the model's transformer config declares, from its config.json alone
    (a local directory, or a hub id already in the local cache); None when it cannot be told without loading."""
    path = Path(model.path).expanduser()
    config = path / "transformer" / "config.json"
    if not config.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model.path, "transformer/config.json")
        except Exception:  # noqa: BLE001 - not a hub id either: the loader names the problem later
            return None
        if not isinstance(cached, str):
            return None
        config = Path(cached)
    try:
        return declared_layer_count(json.loads(config.read_text()))
    except (OSError, ValueError):
        return None


def check_stage(params: Params, stage: str) -> None:
    """Raises ConfigError, in one line, when the settings cannot work for `stage`: the cross-field checks of one
    stage, run before it loads anything (a preset pair valid for prepare may still be unusable for evaluate)."""
    problems = _stage_problems(params, stage)
    if problems:
        raise ConfigError(f"stage {stage}: " + "; ".join(problems))
