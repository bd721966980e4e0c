"""The causal stage's table and summary: the tidy rows (one per comparison, layer, perturbation, dose and metric,
with paired tests; Holm and Bonferroni over each family) and the per-metric summary the flow logs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from seg4diff.config import CausalParams
from seg4diff.evaluation.statistics import paired_family

COLUMNS = [
    "comparison",
    "layer",
    "perturbation",
    "dose",
    "alpha",
    "target_l1",
    "calibration_l1",
    "metric",
    "value",
    "baseline",
    "delta",
    "ci_low",
    "ci_high",
    "n",
    "p_value",
    "p_holm",
    "ci_low_bonferroni",
    "ci_high_bonferroni",
]
FULL = "full"  # the dose label of α = 1


def dose_label(dose: float) -> str:
    """Returns a matched dose's label in the table's `dose` column ("0.25"; α = 1 is FULL)."""
    return f"{dose:g}"


def _effects(run: dict, base_scores: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Returns metric → (unperturbed, perturbed) per unit; the flow loss as (0, its relative increase)."""
    pairs = {metric: (base_scores[metric], values) for metric, values in run["scores"].items()}
    increase = run["flow_loss_increase"]
    return pairs | {"flow_loss_increase": (np.zeros_like(increase), increase)}


def _run_columns(comparison: str, layer: int, kind: str, dose: str, run: dict) -> dict:
    return {
        "comparison": comparison,
        "layer": layer,
        "perturbation": kind,
        "dose": dose,
        "alpha": run["alpha"],
        "target_l1": run["target_l1"],
        "calibration_l1": run["calibration_l1"],
    }


def _test_columns(metric: str, value: float, baseline: float, d: dict) -> dict:
    keys = ("delta", "ci_low", "ci_high", "n", "p_value", "p_holm", "ci_low_bonferroni", "ci_high_bonferroni")
    return {"metric": metric, "value": value, "baseline": baseline} | {key: d[key] for key in keys}


def layer_rows(runs: dict, base_scores: dict[str, np.ndarray], settings: CausalParams) -> list[dict]:
    """Rows perturbed vs unperturbed, Holm and Bonferroni over the family of layers × perturbations per metric and
    dose; and each run's size during generation (`perturbation_l1`)."""
    rows = []
    for dose in dict.fromkeys(dose for _, _, dose in runs):
        keys = [key for key in runs if key[2] == dose]
        effects = [_effects(runs[key], base_scores) for key in keys]
        for metric in effects[0]:
            family = paired_family([e[metric] for e in effects], settings.bootstrap_resamples, settings.seed)
            for key, d in zip(keys, family):
                value, baseline = (d["delta"], 0.0) if metric == "flow_loss_increase" else (d["b"], d["a"])
                rows.append(_run_columns("vs_unperturbed", *key, runs[key]) | _test_columns(metric, value, baseline, d))
        for key in keys:
            size = {"metric": "perturbation_l1", "value": runs[key]["perturbation_l1"], "baseline": 0.0, "n": 0}
            rows.append(_run_columns("vs_unperturbed", *key, runs[key]) | size)
    return rows


def contrast_rows(runs: dict, base_scores: dict, settings: CausalParams, expert_layer: int) -> list[dict]:
    """Rows of the expert's paired effect − the mean of the other layers' (per caption or image), per perturbation,
    dose and metric (value: the expert's mean effect, baseline: the others'); Holm and Bonferroni over the
    perturbations per metric and dose."""
    rows = []
    for dose in dict.fromkeys(dose for _, _, dose in runs):
        kinds = list(dict.fromkeys(kind for _, kind, d in runs if d == dose))
        pairs = {}  # kind → metric → (others' mean effect, expert's effect) per unit
        for kind in kinds:
            effects = {
                layer: {metric: b - a for metric, (a, b) in _effects(runs[layer, kind, dose], base_scores).items()}
                for layer, k, d in runs
                if k == kind and d == dose
            }
            expert, others = effects[expert_layer], [e for layer, e in effects.items() if layer != expert_layer]
            pairs[kind] = {metric: (np.mean([e[metric] for e in others], axis=0), expert[metric]) for metric in expert}
        for metric in pairs[kinds[0]]:
            family = paired_family([pairs[k][metric] for k in kinds], settings.bootstrap_resamples, settings.seed)
            for kind, d in zip(kinds, family):
                columns = _run_columns(
                    "expert_vs_other_layers", expert_layer, kind, dose, runs[expert_layer, kind, dose]
                )
                rows.append(columns | _test_columns(metric, d["b"], d["a"], d))
    return rows


def summary_key(kind: str, dose: str, metric: str) -> str:
    """Returns the summary's key of one perturbation, dose and metric ("word_shuffle.object_recall" at full strength,
    "word_shuffle.dose_0.5.object_recall" at a matched dose)."""
    return f"{kind}.{metric}" if dose == FULL else f"{kind}.dose_{dose}.{metric}"


def causal_summary(table: pd.DataFrame, expert_layer: int, primary_contrast: str | None = None) -> dict:
    """Per perturbation, dose and metric: the layer whose perturbation costs most, the expert's cost with its 95% and
    Bonferroni intervals, Holm-adjusted p-value and rank (1 = most), and the expert − other layers contrast; plus
    "primary_contrast", the pre-registered one ("kind.metric" at the largest dose), when it was measured."""
    summary = {}
    layers = table[(table.comparison == "vs_unperturbed") & (table.metric != "perturbation_l1")]
    contrasts = table[table.comparison == "expert_vs_other_layers"]
    for (kind, dose, metric), group in layers.groupby(["perturbation", "dose", "metric"], sort=False):
        harm = -group.delta if metric != "flow_loss_increase" else group.delta  # larger = more damage
        order = group.assign(harm=harm.values).sort_values("harm", ascending=False).reset_index(drop=True)
        expert = order[order.layer == expert_layer]
        found = len(expert) > 0
        contrast = contrasts[(contrasts.perturbation == kind) & (contrasts.dose == dose) & (contrasts.metric == metric)]
        summary[summary_key(kind, dose, metric)] = {
            "most_harmful_layer": int(order.layer.iloc[0]),
            "most_harmful_delta": float(order.delta.iloc[0]),
            "expert_delta": float(expert.delta.iloc[0]) if found else float("nan"),
            "expert_ci": [float(expert.ci_low.iloc[0]), float(expert.ci_high.iloc[0])] if found else None,
            "expert_ci_bonferroni": (
                [float(expert.ci_low_bonferroni.iloc[0]), float(expert.ci_high_bonferroni.iloc[0])] if found else None
            ),
            "expert_p_holm": float(expert.p_holm.iloc[0]) if found else float("nan"),
            "expert_rank": int(expert.index[0]) + 1 if found else None,
            "layers": int(len(order)),
            "expert_vs_others": _contrast(contrast),
        }
    doses = [dose for dose in table.dose.unique() if dose != FULL]
    if primary_contrast and doses:
        kind, _, metric = primary_contrast.partition(".")
        dose = max(doses, key=float)
        row = contrasts[(contrasts.perturbation == kind) & (contrasts.dose == dose) & (contrasts.metric == metric)]
        if len(row):
            summary["primary_contrast"] = {"perturbation": kind, "dose": dose, "metric": metric} | _contrast(row)
    return summary


def _contrast(rows: pd.DataFrame) -> dict | None:
    """The expert − other layers contrast of one row: its Δ, 95% interval and bootstrap p-value (None: not run)."""
    if not len(rows):
        return None
    row = rows.iloc[0]
    return {"delta": float(row.delta), "ci": [float(row.ci_low), float(row.ci_high)], "p_value": float(row.p_value)}
