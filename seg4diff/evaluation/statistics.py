"""Paired bootstrap intervals: two conditions measured on the same units (images, captions), resampled together.

A difference between two models on one test set is judged by resampling the test units once per draw and scoring
both models on the SAME draw, so the interval is of the difference itself (not of two overlapping intervals).
"""

from __future__ import annotations

import numpy as np

from seg4diff.evaluation.metrics import miou_of


def resample_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) multinomial counts: how often each unit appears in each draw."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=resamples).astype(np.float64)


def paired_mean_difference(a: np.ndarray, b: np.ndarray, resamples: int = 1000, seed: int = 0) -> dict:
    """Returns mean(b − a) over units and its 95% percentile interval; NaN units (undefined for either) left out."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    delta = b[keep] - a[keep]
    if delta.size == 0:
        return {
            "a": float("nan"),
            "b": float("nan"),
            "delta": float("nan"),
            "ci_low": float("nan"),
            "ci_high": float("nan"),
            "n": 0,
        }
    weights = resample_weights(delta.size, resamples, seed)
    means = weights @ delta / delta.size
    return {
        "a": float(a[keep].mean()),
        "b": float(b[keep].mean()),
        "delta": float(delta.mean()),
        "ci_low": float(np.quantile(means, 0.025)),
        "ci_high": float(np.quantile(means, 0.975)),
        "n": int(delta.size),
    }


def paired_miou_difference(stats_a: np.ndarray, stats_b: np.ndarray, resamples: int = 1000, seed: int = 0) -> dict:
    """Returns dataset mIoU of a and b, b − a and its 95% interval, from per-image class statistics (image, 3, C)
    (metrics.class_statistics): each draw sums both models' statistics over the same resampled images."""
    stats_a, stats_b = np.asarray(stats_a, np.float64), np.asarray(stats_b, np.float64)
    if stats_a.shape != stats_b.shape:
        raise ValueError(f"paired statistics differ in shape: {stats_a.shape} vs {stats_b.shape}")
    n = stats_a.shape[0]
    weights = resample_weights(n, resamples, seed)
    flat_a, flat_b = stats_a.reshape(n, -1), stats_b.reshape(n, -1)
    shape = stats_a.shape[1:]
    draws_a = miou_of((weights @ flat_a).reshape(-1, *shape))
    draws_b = miou_of((weights @ flat_b).reshape(-1, *shape))
    delta = draws_b - draws_a
    miou_a, miou_b = float(miou_of(stats_a.sum(0))), float(miou_of(stats_b.sum(0)))
    return {
        "a": miou_a,
        "b": miou_b,
        "delta": miou_b - miou_a,
        "ci_low": float(np.quantile(delta, 0.025)),
        "ci_high": float(np.quantile(delta, 0.975)),
        "n": int(n),
    }


def miou_interval(stats: np.ndarray, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Returns the 95% bootstrap interval of the dataset mIoU from per-image class statistics (image, 3, C)."""
    stats = np.asarray(stats, np.float64)
    n = stats.shape[0]
    draws = miou_of((resample_weights(n, resamples, seed) @ stats.reshape(n, -1)).reshape(-1, *stats.shape[1:]))
    return float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))


def bootstrap_p_value(draws: np.ndarray) -> float:
    """Returns the two-sided bootstrap p-value of "the difference is 0": twice the smaller share of resampled
    differences on either side of 0 (each counted with +1, as a Monte-Carlo p-value), at most 1 — about the smallest
    level 1 − p whose percentile interval leaves 0 out."""
    draws = np.asarray(draws, np.float64)
    below = (1 + np.count_nonzero(draws <= 0)) / (draws.size + 1)
    above = (1 + np.count_nonzero(draws >= 0)) / (draws.size + 1)
    return float(min(1.0, 2 * min(below, above)))


def holm_adjust(p_values: np.ndarray) -> np.ndarray:
    """Returns Holm's step-down adjusted p-values, in the given order: the i-th smallest of m is multiplied by
    m − i + 1, made non-decreasing, capped at 1; NaN p-values are not in the family and stay NaN."""
    p = np.asarray(p_values, np.float64)
    adjusted = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = order.size
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return adjusted


def paired_family(pairs: list[tuple[np.ndarray, np.ndarray]], resamples: int = 1000, seed: int = 0) -> list[dict]:
    """Returns, per test of a family of m paired comparisons (a, b per unit), paired_mean_difference's numbers (the same
    draws, so the same 95% interval) plus its bootstrap p-value (`p_value`), the Holm-adjusted p-value over the family
    (`p_holm`) and the Bonferroni interval at level 1 − 0.05/m (`ci_low_bonferroni`, `ci_high_bonferroni`);
    a test without units has NaN for all and is not counted in m."""
    results, draws, weights = [], [], {}
    for a, b in pairs:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        keep = np.isfinite(a) & np.isfinite(b)
        delta = b[keep] - a[keep]
        if not delta.size:
            results.append(paired_mean_difference(a, b))  # all NaN, n 0
            draws.append(np.array([]))
            continue
        if delta.size not in weights:  # paired_mean_difference's weights, drawn once per unit count
            weights[delta.size] = resample_weights(delta.size, resamples, seed)
        means = weights[delta.size] @ delta / delta.size
        low, high = np.quantile(means, [0.025, 0.975])
        results.append(
            {
                "a": float(a[keep].mean()),
                "b": float(b[keep].mean()),
                "delta": float(delta.mean()),
                "ci_low": float(low),
                "ci_high": float(high),
                "n": int(delta.size),
            }
        )
        draws.append(means)
    p_values = np.array([bootstrap_p_value(means) if means.size else np.nan for means in draws])
    tail = 0.05 / max(int(np.isfinite(p_values).sum()), 1) / 2
    for result, means, p, p_holm in zip(results, draws, p_values, holm_adjust(p_values)):
        low, high = np.quantile(means, [tail, 1 - tail]) if means.size else (np.nan, np.nan)
        result |= {"p_value": float(p), "p_holm": float(p_holm)}
        result |= {"ci_low_bonferroni": float(low), "ci_high_bonferroni": float(high)}
    return results
