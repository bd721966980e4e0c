"""Does grounding emerge in the shipped Shapes organism? For the shipped model and the same architecture at random
init: extract image→text attention (head mean) on val AND test, choose the best (block, σ) on VAL, report its TEST mIoU
with a 95% bootstrap interval (the test-best cell is printed too, marked as an oracle), the median block, every
block's maps averaged (σ chosen on val; the chosen block's difference to it paired) and the shape-word-only variant;
beside them, on the same test images, two baselines given the same ground-truth-class prompts — all background, and a
colour-only rule (a saturated pixel → the prompted class of the nearest palette colour) — and a ceiling: perfect maps
at the token grid (each prompted class's ground-truth area fraction per image token) read exactly as the attention is
(bilinear upsampling, argmax, background below prompt.background_threshold × the peak); with paired intervals of the
organism's difference to each.

    .venv/bin/python benchmarks/organism_grounding.py [--model DIR]   # default: model.path of params.yaml
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from PIL import Image

from seg4diff.backbones.backbone import load_backbone, model_digest
from seg4diff.capture.extract import extract_range, fingerprint, open_or_create, resolve_sigmas
from seg4diff.config import load_params
from seg4diff.data.attention_store import StoreLayout, open_attention
from seg4diff.data.prepared import label_sizes, native_label, open_prepared
from seg4diff.data.shapes_vocabulary import COLOURS, SHAPES
from seg4diff.evaluation.metrics import class_statistics, miou_of
from seg4diff.evaluation.scoring import score_store
from seg4diff.evaluation.statistics import miou_interval, paired_miou_difference
from seg4diff.organism.pipeline import Architecture, OrganismPipeline
from seg4diff.prompts import prompt_style
from seg4diff.segmentation.masks import predict


def _store(params, backbone, data, name: str, split: str):
    p = params.extract.model_copy(
        update={"directions": ["image_to_text"], "diagnostics": False, "head_mean": True, "split": split}
    )
    grid = backbone.token_grid(data.sizes["y"], data.sizes["x"])
    sigmas = resolve_sigmas(backbone, p, grid[0] * grid[1])
    layers = list(range(len(backbone.transformer.transformer_blocks)))
    path = Path(f"/tmp/seg4diff-grounding-{name}-{split}.zarr")
    layout = StoreLayout(data.sizes["sample"], layers, [-1], sigmas, p.max_tokens, grid, ("image_to_text",))
    attrs = {
        "fingerprint": fingerprint(
            params.model.model_dump(), model_digest(params.model), p.model_dump(), params.prompt.model_dump(), sigmas
        ),
        "split": split,
    }
    open_or_create(path, layout, attrs)
    extract_range(
        backbone, data, path, 0, data.sizes["sample"], sigmas, layers, p, prompt_style(params.prompt, p.prompt)
    )
    return open_attention(path), layers, sigmas


def per_sample_stats(params, model_dir: str, name: str, split: str, shape_words_only: bool = False):
    """Head-mean class statistics of one model on one split: per block (sample, layer, σ, 3, C) and of every block's
    maps averaged (sample, σ, 3, C), with the layers and sigmas."""
    params = params.model_copy(update={"model": params.model.model_copy(update={"path": model_dir})})
    data = open_prepared(Path(params.prepare.output) / f"{split}.zarr")
    store, layers, sigmas = _store(params, load_backbone(params.model), data, name, split)
    store = _shape_words_only(store) if shape_words_only else store
    score = lambda s: score_store(
        s,
        data["label"],
        data.sizes["class"],
        params.prompt.threshold,
        progress=False,  # noqa: E731
        sizes=label_sizes(data),
    ).per_sample[:, 0]
    averaged = xr.Dataset(
        {
            "image_to_text": store.image_to_text.astype(np.float32)
            .mean("layer")
            .expand_dims(layer=[-1])
            .transpose(*store.image_to_text.dims),
            "token_class": store.token_class,
        }
    )
    return score(store), score(averaged)[:, 0], layers, sigmas


def grounding(params, model_dir: str, name: str, baselines: dict) -> dict:
    """Val-chosen (block, σ) reported on test, with intervals and paired differences to the baselines."""
    result = {}
    for label, shape_only in (("class phrase", False), ("shape word only", True)):
        val, val_blocks_mean, layers, sigmas = per_sample_stats(params, model_dir, name, "val", shape_only)
        test, blocks_mean, _, _ = per_sample_stats(params, model_dir, name, "test", shape_only)
        val_grid, test_grid = miou_of(val.sum(0, dtype=np.int64)), miou_of(test.sum(0, dtype=np.int64))
        l, t = np.unravel_index(np.nanargmax(val_grid), val_grid.shape)
        oracle_l, oracle_t = np.unravel_index(np.nanargmax(test_grid), test_grid.shape)
        mean_t = int(
            np.nanargmax(miou_of(val_blocks_mean.sum(0, dtype=np.int64)))
        )  # every block's maps averaged: σ on val too
        chosen = test[:, l, t]
        result[label] = {
            "val_chosen_block": layers[l],
            "sigma": sigmas[t],
            "val_miou": float(val_grid[l, t]),
            "test_miou": float(test_grid[l, t]),
            "test_miou_ci": list(miou_interval(chosen)),
            "test_oracle": {
                "block": layers[oracle_l],
                "sigma": sigmas[oracle_t],
                "miou": float(test_grid[oracle_l, oracle_t]),
            },
            "median_block_test_miou": float(np.median(test_grid[:, t])),
            "all_blocks_mean_maps": {
                "sigma": sigmas[mean_t],
                "val_miou": float(miou_of(val_blocks_mean[:, mean_t].sum(0, dtype=np.int64))),
                "test_miou": float(miou_of(blocks_mean[:, mean_t].sum(0, dtype=np.int64))),
                "chosen_block_minus_this": _difference(blocks_mean[:, mean_t], chosen),
            },
            "per_block_test": [round(float(v), 3) for v in test_grid[:, t]],
            "vs": {b: _difference(stats, chosen) for b, stats in baselines.items()},
        }
    return result


def _difference(baseline: np.ndarray, model: np.ndarray) -> dict:
    d = paired_miou_difference(baseline, model)
    return {"delta": round(d["delta"], 4), "ci": [round(d["ci_low"], 4), round(d["ci_high"], 4)]}


def baseline_stats(params) -> dict[str, np.ndarray]:
    """Per test image class statistics of all-background, the colour-only rule and the token-grid ceiling, given the
    GT-class prompts."""
    data = open_prepared(Path(params.prepare.output) / "test.zarr").load()
    names, palette = [str(n) for n in data.class_name.values], np.array(list(COLOURS.values()), float) / 255
    grid = load_backbone(params.model).token_grid(data.sizes["y"], data.sizes["x"])
    stats = {"all background": [], "colour only": [], "token-grid ceiling": []}
    for k in range(data.sizes["sample"]):
        label = native_label(data, k)
        image = data.image.values[k] / 255
        prompted = [c for c in np.flatnonzero(data.present.values[k]) if c != 0]
        colours = np.array([list(COLOURS).index(names[c].split()[0]) for c in prompted])
        nearest = np.argmin(((image[..., None, :] - palette[colours]) ** 2).sum(-1), axis=-1)
        saturated = (image.max(-1) - image.min(-1)) > 0.25
        rule = np.where(saturated, np.array(prompted)[nearest], 0)
        rule = np.asarray(Image.fromarray(rule.astype(np.uint8)).resize(label.shape[::-1], Image.Resampling.NEAREST))
        stats["all background"].append(class_statistics(np.zeros_like(label), label, len(names)))
        stats["colour only"].append(class_statistics(rule, label, len(names)))
        fractions = F.interpolate(
            torch.from_numpy(np.stack([label == c for c in prompted]).astype(np.float32))[None], size=grid, mode="area"
        )[0].numpy()
        ceiling = predict(fractions, np.array(prompted), label.shape, params.prompt.threshold)
        stats["token-grid ceiling"].append(class_statistics(ceiling, label, len(names)))
    return {name: np.stack(values) for name, values in stats.items()}


def _shape_words_only(store):
    """The store with every colour-word token marked as belonging to no class (shape words and "background" kept)."""
    is_shape = np.isin([[str(t) for t in row] for row in store.token_text.values], [*SHAPES, "background"])
    return store.assign(token_class=(("sample", "token"), np.where(is_shape, store.token_class.values, -1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="organism directory (default: model.path of params.yaml)")
    args = parser.parse_args()
    params = load_params()
    shipped = args.model or params.model.path
    random_dir = "/tmp/seg4diff-random-organism"
    words = OrganismPipeline.from_pretrained(shipped).tokenizer.get_vocab()
    OrganismPipeline.build(
        sorted(w for w in words if not w.startswith("[")),
        Architecture.from_params(params.pretrain.architecture, params.prepare.resolution),
        seed=params.pretrain.seed,
    ).save_pretrained(random_dir)
    baselines = baseline_stats(params)
    report = {
        "baselines_test": {
            name: {"miou": round(float(miou_of(s.sum(0))), 4), "ci": [round(x, 4) for x in miou_interval(s)]}
            for name, s in baselines.items()
        },
        "shipped": grounding(params, shipped, "shipped", baselines),
        "random_init": grounding(params, random_dir, "random", baselines),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
