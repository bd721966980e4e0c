"""Expert-layer selection from the tidy layer scores: a rule from params, the runner-up, and whether they overlap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from seg4diff.errors import DataError
from seg4diff.evaluation.statistics import paired_miou_difference


def select_expert(
    scores: pd.DataFrame, rule: str, direction: str, force_layer: int | None = None, force_sigma: float | None = None
) -> dict:
    """Returns the expert (layer, sigma) with its mIoU and interval, the runner-up layer, and the rule used."""
    if "sigma" not in scores.columns:
        raise ValueError(
            f"the layer scores have no 'sigma' column (columns {list(scores.columns)}): they were written by an "
            "older seg4diff; re-run the score stage (dvc repro score)"
        )
    rows = head_mean_miou(scores, direction)
    if rows.empty:
        raise ValueError(f"no head-mean mIoU rows for direction '{direction}' in the layer scores")
    if force_sigma is not None:
        rows = rows[(rows.sigma - force_sigma).abs() < 1e-9]
        if rows.empty:
            raise ValueError(f"select.force_sigma {force_sigma} is not a scored sigma")
    key = {"best_miou": "value", "best_lower_bound": "ci_low"}[rule]
    per_layer = rows.loc[rows.groupby("layer")[key].idxmax()].sort_values(
        key, ascending=False
    )  # each layer at its best σ
    if force_layer is not None:
        if force_layer not in per_layer.layer.values:
            raise ValueError(
                f"select.force_layer {force_layer} is not a scored layer ({sorted(per_layer.layer.tolist())})"
            )
        expert = per_layer[per_layer.layer == force_layer].iloc[0]
    else:
        expert = per_layer.iloc[0]
    others = per_layer[per_layer.layer != expert.layer]
    describe = lambda row: {
        "layer": int(row.layer),
        "sigma": float(row.sigma),
        "miou": float(row.value),  # noqa: E731
        "ci_low": float(row.ci_low),
        "ci_high": float(row.ci_high),
    }
    result = {
        **describe(expert),
        "direction": direction,
        "rule": rule,
        "forced": force_layer is not None or force_sigma is not None,
    }
    if not others.empty:
        runner_up = others.iloc[0]
        result["runner_up"] = describe(runner_up)
        result["intervals_overlap"] = bool(runner_up.ci_high >= expert.ci_low and expert.ci_high >= runner_up.ci_low)
    return result


def paired_vs_runner_up(expert: dict, stats: dict, resamples: int, seed: int) -> dict:
    """Expert − runner-up mIoU on the same resampled images (a 95% paired interval), from the score stage's per-sample
    statistics `stats` (per_sample (sample, direction, layer, sigma, 3, C), directions, layers, sigmas)."""

    def pick(choice: dict) -> np.ndarray:
        d = list(stats["directions"]).index(expert["direction"])
        l = list(stats["layers"]).index(choice["layer"])
        t = int(np.argmin(np.abs(np.asarray(stats["sigmas"]) - choice["sigma"])))
        return stats["per_sample"][:, d, l, t]

    d = paired_miou_difference(pick(expert["runner_up"]), pick(expert), resamples, seed)
    return {"delta_miou": d["delta"], "ci": [d["ci_low"], d["ci_high"]], "n": d["n"]}


def stats_path(scores_csv: str | Path) -> Path:
    """Where the score stage keeps per-sample head-mean class statistics of every (direction, layer, σ), next to its
    CSV: what paired comparisons (expert vs runner-up) resample."""
    return Path(scores_csv).with_name("layer_stats.npz")


def head_mean_curve(scores: pd.DataFrame, sigma: float, direction: str = "image_to_text") -> pd.DataFrame:
    """Returns the tidy table's head-mean mIoU rows of `direction` at noise level `sigma`, one per layer, in layer
    order."""
    rows = head_mean_miou(scores, direction)
    return rows[(rows.sigma - sigma).abs() < 1e-9].sort_values("layer")


def head_mean_miou(scores: pd.DataFrame, direction: str = "image_to_text") -> pd.DataFrame:
    """Returns the rows of the score stage's tidy table (results/layer_scores.csv) that hold the head-mean mIoU of
    `direction`, one per (layer, σ)."""
    return scores[(scores.metric == "miou") & (scores["head"].astype(str) == "mean") & (scores.direction == direction)]


EXPERT_KEYS = ("layer", "sigma", "miou", "direction", "rule")


def read_expert(path: str | Path) -> dict:
    """Returns the expert the select stage wrote to `path`; raises FileNotFoundError or DataError, in one line, when
    it is missing or holds other keys (written by an older seg4diff), saying to run the select stage."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the select stage first (dvc repro select)")
    expert = json.loads(path.read_text())
    missing = [key for key in EXPERT_KEYS if key not in expert]
    if missing:
        raise DataError(
            f"{path} has no {', '.join(missing)} (written by an older seg4diff?): re-run the select stage "
            "(dvc repro select)"
        )
    return expert
