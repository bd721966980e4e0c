"""Layer-wise grounding scores from the attention store: zero-shot mIoU per (layer, σ, head), with intervals.

Streams over samples (one sample's attention in memory at a time, float32 accumulation) and keeps, per sample, only
O(classes) statistics per (layer, σ): each class's true positives, label area and prediction area. They add
up over samples, so the dataset mIoU and a seeded bootstrap over samples (a 95% interval for every layer) come from
them exactly as from confusion matrices, at 3·C numbers where a confusion matrix holds C².
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from tqdm import tqdm

from seg4diff.config import PromptParams
from seg4diff.data.attention_store import (
    ATTENTION,
    check_provenance,
    load_samples,
    open_attention,
    refuse_damaged,
    sigma_index,
)
from seg4diff.data.prepared import open_split, split_path
from seg4diff.errors import ConfigError, DataError
from seg4diff.evaluation.metrics import class_statistics, miou_of
from seg4diff.segmentation.masks import class_maps, predict


@dataclass
class ScoreTables:
    per_sample: np.ndarray  # (sample, direction, layer, sigma, 3, C) head-mean class statistics per sample (int32)
    per_head: np.ndarray  # (direction, layer, head, sigma, 3, C) summed over samples
    layer_mean: np.ndarray  # (direction, sigma, 3, C): maps averaged over all layers (a reference)
    diagnostics: dict[str, np.ndarray]  # name → (layer, sigma) means
    directions: list[str]
    layers: list[int]
    heads: list[int]
    sigmas: list[float]


def _sample_predictions(
    maps: np.ndarray, token_class: np.ndarray, size: tuple[int, int], background_threshold: float | None
) -> np.ndarray:
    """(…, token, y, x) → (…, H, W) predictions over the classes the prompt named."""
    prompted = np.unique(token_class[token_class >= 0])
    return predict(class_maps(maps, token_class, prompted), prompted, size, background_threshold)


def predictable_classes(token_class: np.ndarray, background_threshold: float | None) -> np.ndarray:
    """The class ids a sample's predictions can hold: its prompted classes, and background (0) by threshold."""
    prompted = np.unique(token_class[token_class >= 0])
    return np.union1d(prompted, [0]) if background_threshold is not None else prompted


def score_store(
    store: xr.Dataset,
    labels: xr.DataArray,
    num_classes: int,
    background_threshold: float | None = None,
    progress: bool = True,
    sizes: list[tuple[int, int]] | None = None,
) -> ScoreTables:
    """Returns class statistics for every sample, direction, layer, σ and head of a complete attention store.

    `background_threshold`: for stores whose prompts left background out (see masks.predict). `sizes`: each sample's
    valid label (height, width) inside the padded `labels` (prepared.label_sizes; None: the whole label)."""
    directions = [d for d in ATTENTION if d in store]
    layers, heads, sigmas = (
        store["layer"].values.tolist(),
        store["head"].values.tolist(),
        store["sigma"].values.tolist(),
    )
    n = store.sizes["sample"]
    sizes = sizes or [(labels.sizes["label_y"], labels.sizes["label_x"])] * n
    per_sample = np.zeros(
        (n, len(directions), len(layers), len(sigmas), 3, num_classes), np.int32
    )  # pixel counts < 2³¹
    per_head = np.zeros((len(directions), len(layers), len(heads), len(sigmas), 3, num_classes), np.int64)
    layer_mean = np.zeros((len(directions), len(sigmas), 3, num_classes), np.int64)
    sums = {
        name: np.zeros((len(layers), len(sigmas)))
        for name in ("image_to_text_mass", "image_entropy", "text_entropy")
        if name in store
    }
    for s in tqdm(range(n), desc="score", unit="sample", disable=not progress):
        sample = load_samples(store, s)
        token_class = sample.token_class.values
        size = sizes[s]
        target = labels.isel(sample=s).values[: size[0], : size[1]]
        classes = predictable_classes(token_class, background_threshold)
        for d, direction in enumerate(directions):
            maps = sample[direction].values.astype(
                np.float32
            )  # (layer, head, timestep, token, y, x): one timestep per σ
            head_mean = maps.mean(axis=1)
            predictions = _sample_predictions(
                head_mean, token_class, size, background_threshold
            )  # (layer, sigma, H, W)
            per_sample[s, d] = class_statistics(predictions, target, num_classes, predicted_classes=classes)
            if len(heads) > 1:
                by_head = _sample_predictions(
                    maps, token_class, size, background_threshold
                )  # (layer, head, sigma, H, W)
                per_head[d] += class_statistics(by_head, target, num_classes, predicted_classes=classes)
            averaged = _sample_predictions(
                head_mean.mean(axis=0), token_class, size, background_threshold
            )  # (sigma, H, W)
            layer_mean[d] += class_statistics(averaged, target, num_classes, predicted_classes=classes)
        valid = token_class >= 0
        for name in sums:
            values = sample[name].values.astype(np.float32).mean(axis=1)  # head mean → (layer, sigma, …)
            if name == "text_entropy":
                sums[name] += values[..., valid].mean(axis=-1) if valid.any() else 0
            else:
                sums[name] += values.reshape(*values.shape[:2], -1).mean(axis=-1)
    return ScoreTables(
        per_sample, per_head, layer_mean, {k: v / max(n, 1) for k, v in sums.items()}, directions, layers, heads, sigmas
    )


def bootstrap_miou(per_sample: np.ndarray, resamples: int, seed: int, chunk: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Returns the 2.5% and 97.5% quantiles of mIoU over seeded resamples of the samples, for each leading index."""
    rng = np.random.default_rng(seed)
    n = per_sample.shape[0]
    flat = per_sample.reshape(n, -1).astype(np.float64)
    draws = []
    for start in range(0, resamples, chunk):
        weights = rng.multinomial(n, np.full(n, 1 / n), size=min(chunk, resamples - start)).astype(np.float64)
        summed = (weights @ flat).reshape(-1, *per_sample.shape[1:])
        draws.append(miou_of(summed))
    draws = np.concatenate(draws)
    return np.quantile(draws, 0.025, axis=0), np.quantile(draws, 0.975, axis=0)


def tidy_scores(tables: ScoreTables, resamples: int, seed: int) -> pd.DataFrame:
    """Returns the tidy table: layer, sigma, head ("mean" or an index), direction, metric, value, ci_low, ci_high."""
    rows = []
    total = tables.per_sample.sum(axis=0, dtype=np.int64)  # (direction, layer, sigma, 3, C)
    low, high = bootstrap_miou(tables.per_sample, resamples, seed)
    miou = miou_of(total)
    for d, direction in enumerate(tables.directions):
        for l, layer in enumerate(tables.layers):
            for t, sigma in enumerate(tables.sigmas):
                rows.append((layer, sigma, "mean", direction, "miou", miou[d, l, t], low[d, l, t], high[d, l, t]))
                if len(tables.heads) > 1:
                    for h, head in enumerate(tables.heads):
                        rows.append(
                            (
                                layer,
                                sigma,
                                str(head),
                                direction,
                                "miou",
                                miou_of(tables.per_head[d, l, h, t]),
                                np.nan,
                                np.nan,
                            )
                        )
    for name, values in tables.diagnostics.items():
        for l, layer in enumerate(tables.layers):
            for t, sigma in enumerate(tables.sigmas):
                rows.append(
                    (
                        layer,
                        sigma,
                        "mean",
                        "image_to_text" if name.startswith("image") else "text_to_image",
                        name,
                        values[l, t],
                        np.nan,
                        np.nan,
                    )
                )
    return pd.DataFrame(rows, columns=["layer", "sigma", "head", "direction", "metric", "value", "ci_low", "ci_high"])


def headline_scores(tables: ScoreTables) -> dict:
    """Returns, per direction, the best (layer, σ) by head-mean mIoU and the samples scored: the score stage's metrics.
    The best cell's mIoU is not among them: it was chosen on the images it would report (the per-layer curves in
    results/ hold every candidate; the evaluate stage reports the expert on other images)."""
    headline = {"samples": int(tables.per_sample.shape[0])}
    for d, direction in enumerate(tables.directions):
        grid = miou_of(tables.per_sample[:, d].sum(axis=0, dtype=np.int64))  # (layer, sigma)
        l, t = np.unravel_index(np.nanargmax(grid), grid.shape)
        headline |= {f"{direction}.best_layer": tables.layers[l], f"{direction}.best_sigma": tables.sigmas[t]}
    return headline


def open_scored(
    store_path: str | Path, prepared: str | Path, sigmas: list[float] | None
) -> tuple[xr.Dataset, xr.Dataset]:
    """Returns (the attention store at `store_path` restricted to noise levels `sigmas` (None: all stored), the
    prepared split of its samples under `prepared`); raises DataError when the store is incomplete, misses a chunk
    file (an altered one is named when read: load_samples) or was extracted from another version of the prepared
    split, and ConfigError naming `score.sigmas` when a level is not stored."""
    store = open_attention(Path(store_path))
    if not bool(store.complete.all()):
        missing = np.flatnonzero(~store.complete.values)[:10].tolist()
        raise DataError(f"attention store {store_path} is incomplete (samples {missing}…): re-run extract")
    refuse_damaged(Path(store_path), decode=False)  # a missing file now; an altered one when read (load_samples)
    split = open_split(prepared, store.attrs["split"])
    check_provenance(store, Path(store_path), split, split_path(prepared, store.attrs["split"]))
    if sigmas is not None:
        try:
            store = store.isel(timestep=sigma_index(store, sigmas))
        except ValueError as error:
            raise ConfigError(f"score.sigmas: {error}") from None
    return store, split.isel(sample=store.sample.values)


def store_background_threshold(store: xr.Dataset, prompt: PromptParams) -> float | None:
    """The background threshold of `prompt` when the store's prompts left background out, else None (a word)."""
    return prompt.background_threshold if store.attrs.get("background") == "threshold" else None
