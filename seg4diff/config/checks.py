"""Cross-field checks of the settings, per stage: run before a stage loads anything, each problem named in one line."""

from __future__ import annotations

from seg4diff.config.params import Params
from seg4diff.errors import ConfigError


def _stage_problems(params: Params, stage: str) -> list[str]:
    """The cross-field problems of the settings for `stage`, each a short phrase (none: it can run)."""
    prepared = params.prepare.splits
    reads = {  # the prepared splits each stage reads, by the setting that names them
        "pretrain": {"pretrain (its train split)": "train", "pretrain (its val split)": "val"},
        "extract": {"extract.split": params.extract.split},
        "causal": {"causal.split": params.causal.split},
        "finetune": {"finetune (its train split)": "train", "finetune (its val split)": "val"},
        "evaluate": {"evaluate.split": params.evaluate.split, "evaluate.val_split": params.evaluate.val_split},
    }.get(stage, {})
    problems = [
        f"{key} reads split '{split}', which prepare.splits {prepared} does not prepare"
        for key, split in reads.items()
        if split not in prepared
    ]
    if stage == "evaluate" and params.evaluate.val_split == params.evaluate.split:
        problems.append(
            f"evaluate.val_split '{params.evaluate.val_split}' is the evaluated split (evaluate.split): the "
            "unsupervised threshold and the predictor must be chosen on another split"
        )
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
    return problems


def check_stage(params: Params, stage: str) -> None:
    """Raises ConfigError, in one line, when the settings cannot work for `stage`: the cross-field checks of one
    stage, run before it loads anything (a preset pair valid for prepare may still be unusable for evaluate)."""
    problems = _stage_problems(params, stage)
    if problems:
        raise ConfigError(f"stage {stage}: " + "; ".join(problems))
