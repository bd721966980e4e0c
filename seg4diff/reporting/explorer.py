"""The attention explorer: one self-contained HTML page (data embedded, no network, no other file) to browse the
image→text attention of the store by sample, layer, head, noise level and class word, next to the ground truth, the
prediction it makes, the layer × σ mIoU heatmap and the per-layer grounding curve.

Predictions are made here by the scoring code itself (masks.class_maps + masks.predict at each image's label size),
so the page shows exactly what the metrics counted; the browser only draws.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import zlib
from importlib import resources

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import xarray as xr
from PIL import Image

from seg4diff.data.attention_store import load_samples
from seg4diff.data.prepared import class_names, native_label
from seg4diff.data.sample import IGNORE_INDEX
from seg4diff.evaluation.metrics import class_iou, class_statistics
from seg4diff.evaluation.scoring import predictable_classes
from seg4diff.evaluation.selection import head_mean_miou
from seg4diff.reporting.plots import palette
from seg4diff.segmentation.masks import class_maps, predict


def _b64(array: np.ndarray) -> str:
    """uint8 bytes, deflated (zlib; the browser's DecompressionStream inflates them), in base64."""
    return base64.b64encode(zlib.compress(np.ascontiguousarray(array, dtype=np.uint8).tobytes(), 9)).decode("ascii")


def _png(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def display_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """The (height, width) a label of height×width is drawn at: its own size, or shrunk to `longest` on its long
    side."""
    scale = min(1.0, longest / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _shrink(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of (…, H, W) ids to `size` (ids are never blended)."""
    if label.shape[-2:] == size:
        return label
    rows = (np.arange(size[0]) + 0.5) * label.shape[-2] / size[0]
    cols = (np.arange(size[1]) + 0.5) * label.shape[-1] / size[1]
    return label[..., rows.astype(int)[:, None], cols.astype(int)[None, :]]


def _quantise(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-map min–max to 0..255 over the last two axes; returns (uint8 maps, (…, 2) float lows and highs)."""
    low, high = maps.min(axis=(-2, -1), keepdims=True), maps.max(axis=(-2, -1), keepdims=True)
    scaled = np.where(high > low, (maps - low) / np.where(high > low, high - low, 1), 0)
    return np.round(scaled * 255).astype(np.uint8), np.concatenate([low, high], axis=-1)[..., 0, :]


def _sample_entry(
    store_sample: xr.Dataset,
    prepared: xr.Dataset,
    index: int,
    names: list[str],
    heads: list,
    background_threshold: float | None,
    longest: int,
) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """One sample's page data, and (its predictions (layer, head, σ, H, W) at label size, its label, its classes)."""
    token_class = store_sample.token_class.values
    prompted = np.unique(token_class[token_class >= 0])
    maps = store_sample.image_to_text.values.astype(np.float32)  # (layer, head, timestep, token, y, x)
    if len(heads) > 1:  # the head mean first, then every head
        maps = np.concatenate([maps.mean(axis=1, keepdims=True), maps], axis=1)
    per_class = class_maps(maps, token_class, prompted)  # (layer, head, timestep, class, y, x)
    label = native_label(prepared, index)
    predictions = predict(per_class, prompted, label.shape, background_threshold).astype(np.uint8)
    size = display_size(*label.shape, longest)
    quantised, ranges = _quantise(per_class)
    image = prepared.image.values[index]
    entry = {
        "id": str(prepared.source_id.values[index]),
        "prompt": str(store_sample.prompt.values),
        "image": _png(image),
        "classes": prompted.tolist(),
        "size": list(size),
        "label": _b64(_shrink(label, size)),
        "maps": _b64(quantised),
        "ranges": np.round(ranges, 6).tolist(),
        "pred": _b64(_shrink(predictions, size)),
        "words": {
            str(c): " ".join(str(t) for t, k in zip(store_sample.token_text.values, token_class) if k == c)
            for c in prompted
        },
    }
    return entry, predictions, label, predictable_classes(token_class, background_threshold)


def readout_entry(maps: np.ndarray, classes: np.ndarray, label_shape, thresholds, size) -> dict:
    """One sample's readout maps (readout, class, y, x) for the page: quantised maps with their ranges, and each
    readout's prediction at its own val-chosen background threshold (label size, shrunk for display)."""
    predictions = np.stack([predict(m, classes, label_shape, t) for m, t in zip(maps, thresholds)]).astype(np.uint8)
    quantised, ranges = _quantise(maps)
    return {"maps": _b64(quantised), "ranges": np.round(ranges, 6).tolist(), "pred": _b64(_shrink(predictions, size))}


def grounding_table(scores: pd.DataFrame, layers: list[int], sigmas: list[float]) -> dict:
    """The layer × σ head-mean image→text mIoU with its 95% interval, as nested lists [layer][σ] (NaN → None)."""
    rows = head_mean_miou(scores)
    table = {name: [[None] * len(sigmas) for _ in layers] for name in ("miou", "ci_low", "ci_high")}
    for row in rows.itertuples():
        if row.layer in layers and any(np.isclose(row.sigma, sigmas)):
            l, t = layers.index(row.layer), int(np.argmin(np.abs(np.asarray(sigmas) - row.sigma)))
            for name, value in (("miou", row.value), ("ci_low", row.ci_low), ("ci_high", row.ci_high)):
                table[name][l][t] = None if pd.isna(value) else round(float(value), 5)
    return table


def explorer_data(
    store: xr.Dataset,
    prepared: xr.Dataset,
    scores: pd.DataFrame,
    expert: dict,
    samples: int,
    background_threshold: float | None,
    longest: int = 128,
    causal: pd.DataFrame | None = None,
    readouts: dict | None = None,
) -> dict:
    """Returns everything the page shows for the first `samples` samples of a complete attention store.

    `prepared`: the prepared split the store was extracted from, rows aligned with the store's samples.
    `causal`: optional table (layer, metric, value, ci_low, ci_high) drawn beside the grounding curve.
    `readouts`: optional maps of the readouts stage for these samples ({"names", "reads", "thresholds", "maps": per
    sample (readout, class, y, x)}), shown when the page's readout chooser picks one.
    """
    names = class_names(prepared)
    layers, sigmas = store.layer.values.tolist(), [float(s) for s in store.sigma.values]
    heads = ["mean"] + ([int(h) for h in store["head"].values] if store.sizes["head"] > 1 else [])
    count = min(samples, store.sizes["sample"])
    entries, totals = [], np.zeros((len(layers), len(heads), len(sigmas), 3, len(names)), np.int64)
    for s in range(count):
        sample = load_samples(store, s)
        entry, predictions, label, classes = _sample_entry(
            sample, prepared, s, names, heads, background_threshold, longest
        )
        if readouts is not None and s < len(readouts["maps"]):
            entry["readouts"] = readout_entry(
                readouts["maps"][s],
                np.asarray(entry["classes"]),
                label.shape,
                readouts["thresholds"],
                tuple(entry["size"]),
            )
        entries.append(entry)
        totals += class_statistics(predictions, label, len(names), predicted_classes=classes)
    iou = class_iou(totals)
    colormap = np.round(plt.get_cmap("magma")(np.linspace(0, 1, 256))[:, :3] * 255).astype(int)
    return {
        "classes": names,
        "palette": np.round(palette(len(names))[: len(names)] * 255).astype(int).tolist(),
        "colormap": colormap.tolist(),
        "layers": layers,
        "heads": heads,
        "sigmas": sigmas,
        "grid": [store.sizes["y"], store.sizes["x"]],
        "expert": {"layer": expert["layer"], "sigma": expert["sigma"]},
        "background": background_threshold,
        "ignore": IGNORE_INDEX,
        "grounding": grounding_table(scores, layers, sigmas),
        "samples": entries,
        "class_iou": np.where(np.isnan(iou), -1, np.round(iou, 4)).tolist(),
        "causal": None if causal is None else causal.to_dict(orient="records"),
        "readouts": None
        if readouts is None
        else {k: list(readouts[k]) for k in ("names", "reads", "blocks")}
        | {"thresholds": [float(t) for t in readouts["thresholds"]]},
    }


# <, > and & only occur inside JSON strings, where these escapes mean the same characters: the payload can then never
# close its <script> element or open a comment in it, whatever a class name, caption or path holds.
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def render_html(data: dict, title: str) -> str:
    """Returns the page: the template with `data` embedded as JSON (no script or file is fetched) and `title` as text.

    Every dataset string (class names, captions, sample ids, the model path in `title`) stays data: the title is
    HTML-escaped, the JSON cannot end its script element, and the page's script writes strings with textContent only.
    """
    template = resources.files("seg4diff.reporting").joinpath("templates/explorer.html").read_text(encoding="utf-8")
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).translate(_SCRIPT_SAFE)
    fields = {"__TITLE__": html.escape(title), "__DATA__": payload}  # filled in one pass: a title may hold "__DATA__"
    return re.sub("__TITLE__|__DATA__", lambda match: fields[match.group()], template)
