"""Tasks of the score stage: stream the attention store into per-class statistics, then tidy scores and figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import task

from seg4diff.config import Params
from seg4diff.data.attention_store import load_samples, sigma_index
from seg4diff.data.prepared import class_names, label_sizes, native_label
from seg4diff.evaluation.metrics import miou_of
from seg4diff.evaluation.scoring import (
    ScoreTables,
    headline_scores,
    open_scored,
    score_store,
    store_background_threshold,
    tidy_scores,
)
from seg4diff.evaluation.selection import stats_path
from seg4diff.reporting.outputs import write_csv
from seg4diff.reporting.plots import attention_examples, heatmap, layer_curve
from seg4diff.segmentation.masks import class_maps, predict, upsample


@task(name="score-layers")
def score_layers_task(params: Params) -> ScoreTables:
    store, prepared = open_scored(params.extract.output, params.prepare.output, params.score.sigmas)
    return score_store(
        store,
        prepared["label"],
        prepared.sizes["class"],
        store_background_threshold(store, params.prompt),
        sizes=label_sizes(prepared),
    )


@task(name="write-scores")
def write_scores_task(params: Params, tables: ScoreTables) -> dict:
    """Writes results/layer_scores.csv (+ the DVC plot tables); returns figures and headline numbers."""
    scores = tidy_scores(tables, params.score.bootstrap_resamples, params.score.seed)
    out = Path(params.score.output)
    write_csv(scores, out)
    np.savez_compressed(
        stats_path(params.score.output),
        per_sample=tables.per_sample,
        directions=np.array(tables.directions),
        layers=np.array(tables.layers),
        sigmas=np.array(tables.sigmas),
    )
    miou = scores[(scores.metric == "miou") & (scores["head"] == "mean")]
    write_csv(
        miou.pivot_table(index="layer", columns="direction", values="value", aggfunc="max").reset_index(),
        out.parent / "layer_curve.csv",
    )
    write_csv(miou[miou.direction == "image_to_text"][["layer", "sigma", "value"]], out.parent / "layer_sigma.csv")

    figures = {"layer_curve.png": layer_curve(scores)}
    for d, direction in enumerate(tables.directions):
        grid = miou_of(tables.per_sample[:, d].sum(axis=0, dtype=np.int64))  # (layer, sigma)
        figures[f"layer_sigma_{direction}.png"] = heatmap(
            grid, tables.layers, tables.sigmas, f"mIoU, {direction}", "layer", "σ"
        )
        if len(tables.heads) > 1:
            best_t = int(np.nanargmax(np.nanmax(grid, axis=0)))
            by_head = miou_of(tables.per_head[d, :, :, best_t])
            figures[f"layer_head_{direction}.png"] = heatmap(
                by_head,
                tables.layers,
                tables.heads,
                f"mIoU per head, {direction}, σ={tables.sigmas[best_t]:g}",
                "layer",
                "head",
            )
    return {"figures": figures, "headline": headline_scores(tables), "rows": len(scores)}


@task(name="example-maps")
def example_maps_task(params: Params, layer: int, sigma: float):
    """Returns the figure of example image→text maps at (layer, sigma) next to image, ground truth and prediction."""
    store, prepared = open_scored(params.extract.output, params.prepare.output, params.score.sigmas)
    names = class_names(prepared)
    count = min(params.score.examples, store.sizes["sample"])
    images, labels, predictions, maps, titles = [], [], [], [], []
    for s in range(count):
        sample = load_samples(store.sel(layer=layer), s, timestep=sigma_index(store, [sigma])[0])
        token_class = sample.token_class.values
        prompted = np.unique(token_class[token_class >= 0])
        per_class = class_maps(sample.image_to_text.values.astype(np.float32).mean(axis=0), token_class, prompted)
        images.append(prepared.image.values[s])
        labels.append(native_label(prepared, s))
        size = labels[-1].shape
        predictions.append(predict(per_class, prompted, size, store_background_threshold(store, params.prompt)))
        maps.append(list(upsample(per_class, size)))
        titles.append([names[c] for c in prompted])
    return attention_examples(
        images, labels, predictions, maps, titles, len(names), f"image→text attention, layer {layer}, σ={sigma:g}"
    )
