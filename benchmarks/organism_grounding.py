"""Does the organism ground its prompts, and by more than a rule that never looks at shape? Every reading is chosen
on VAL and reported on TEST, each with its own val-chosen background threshold (evaluate.background_thresholds):

- the organism's head-mean image→text attention: the best (block, σ, threshold) on val (the expert), the best of
  the other blocks (the runner-up) and every block's maps averaged;
- all background;
- the colour rule, at the token grid like the attention (each prompted class's share of every token's pixels, read
  exactly as the attention is): saturated pixels grouped by their nearest palette colour. Design colour_shape: a
  group → the prompted class named with its colour (colour solves it); design shape: colour names no class, so the
  groups, largest first, → the prompted classes in prompt order (figure–ground plus a guess: what colour and
  position can do without shape);
- perfect maps (each prompted class's ground-truth share of every token), read the same way: the ceiling of the
  reading at the token grid.

Paired 95% intervals (10,000 resamples over test images) of the expert's difference to each, and the same on the
test images with two or more objects, where a prompt's classes must be told apart.

    .venv/bin/python benchmarks/organism_grounding.py [--model DIR] [--random-init] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from seg4diff.backbones.backbone import load_backbone, model_digest
from seg4diff.capture.extract import extract_range, fingerprint, open_or_create, resolve_sigmas
from seg4diff.config import load_params, parse_assignments
from seg4diff.data.attention_store import StoreLayout, load_samples, open_attention
from seg4diff.data.prepared import class_names, native_label, open_prepared
from seg4diff.data.shapes_vocabulary import DESIGNS
from seg4diff.evaluation.metrics import class_statistics, miou_of
from seg4diff.evaluation.statistics import miou_interval, paired_miou_difference
from seg4diff.organism.pipeline import Architecture, OrganismPipeline
from seg4diff.prompts import prompt_style
from seg4diff.segmentation.masks import class_maps, predict

RESAMPLES = 10_000
SATURATION = 0.25  # the shape reader's: grey backgrounds stay below it


def attention_store(params, model_dir: str, name: str, split: str):
    """Extracts (once: the store resumes) head-mean image→text attention of every block at extract.sigmas."""
    params = params.model_copy(update={"model": params.model.model_copy(update={"path": model_dir})})
    p = params.extract.model_copy(
        update={"directions": ["image_to_text"], "diagnostics": False, "head_mean": True, "split": split}
    )
    data = open_prepared(Path(params.prepare.output) / f"{split}.zarr")
    backbone = load_backbone(params.model)
    grid = backbone.token_grid(data.sizes["y"], data.sizes["x"])
    sigmas = resolve_sigmas(backbone, p, grid[0] * grid[1])
    layers = list(range(len(backbone.transformer.transformer_blocks)))
    path = Path(f"/tmp/seg4diff-grounding-{name}-{split}.zarr")
    layout = StoreLayout(data.sizes["sample"], layers, [-1], sigmas, p.max_tokens, grid, ("image_to_text",))
    digest = model_digest(params.model)
    settings = (params.model.model_dump(), digest, p.model_dump(), params.prompt.model_dump(), sigmas)
    open_or_create(path, layout, {"fingerprint": fingerprint(*settings), "split": split})
    extract_range(
        backbone, data, path, 0, data.sizes["sample"], sigmas, layers, p, prompt_style(params.prompt, p.prompt)
    )
    return open_attention(path)


def _statistics(maps: np.ndarray, prompted: np.ndarray, label: np.ndarray, thresholds: list[float], n: int):
    """(…, class, y, x) maps → (threshold, …, 3, C) class statistics of their readings at every threshold."""
    classes = np.union1d(prompted, [0])
    return np.stack(
        [
            class_statistics(predict(maps, prompted, label.shape, t), label, n, predicted_classes=classes)
            for t in thresholds
        ]
    )


def attention_statistics(store, data, thresholds: list[float]) -> dict[str, np.ndarray]:
    """Per readout, (threshold, sample, …, 3, C): 'block' (…: layer, σ) and 'blocks mean' (…: σ)."""
    n, out = data.sizes["class"], {"block": [], "blocks mean": []}
    for s in tqdm(range(store.sizes["sample"]), desc="score", unit="sample", leave=False):
        sample = load_samples(store, s)
        token_class = sample.token_class.values
        prompted = np.unique(token_class[token_class >= 0])
        maps = class_maps(sample.image_to_text.values.astype(np.float32)[:, 0], token_class, prompted)
        label = native_label(data, s)
        out["block"].append(_statistics(maps, prompted, label, thresholds, n))  # maps: (layer, σ, class, y, x)
        out["blocks mean"].append(_statistics(maps.mean(0), prompted, label, thresholds, n))
    return {name: np.stack(values, axis=1) for name, values in out.items()}


def _token_shares(masks: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(class, H, W) boolean masks → (class, *grid) share of every token's pixels in each."""
    return F.interpolate(torch.from_numpy(masks.astype(np.float32))[None], size=grid, mode="area")[0].numpy()


def colour_rule_masks(image: np.ndarray, prompted: list[int], names: list[str], design: str) -> np.ndarray:
    """(class, H, W) masks of the colour rule for the prompted classes of one image (RGB in [0, 1])."""
    colours = DESIGNS[design].colours
    palette = np.array(list(colours.values()), float) / 255
    saturated = (image.max(-1) - image.min(-1)) > SATURATION
    nearest = np.argmin(((image[..., None, :] - palette) ** 2).sum(-1), axis=-1)
    masks = np.zeros((len(prompted), *image.shape[:2]), bool)
    if design == "colour_shape":  # the class name says its colour
        for k, c in enumerate(prompted):
            masks[k] = saturated & (nearest == list(colours).index(names[c].split()[0]))
        return masks
    groups = sorted(set(nearest[saturated].tolist()), key=lambda g: -int((saturated & (nearest == g)).sum()))
    for i, g in enumerate(groups):
        masks[i % len(prompted)] |= saturated & (nearest == g)
    return masks


def reference_statistics(params, data, grid: tuple[int, int], thresholds: list[float]) -> dict[str, np.ndarray]:
    """Per reference, (threshold, sample, 3, C): 'colour rule', 'perfect maps' and 'all background' (threshold: 1)."""
    names, n, design = class_names(data), data.sizes["class"], params.data.shapes.design
    out = {"all background": [], "colour rule": [], "perfect maps": []}
    images = data.image.values
    for s in tqdm(range(data.sizes["sample"]), desc="references", unit="sample", leave=False):
        label = native_label(data, s)
        prompted = np.array([c for c in np.flatnonzero(data.present.values[s]) if c != 0])
        image = images[s].astype(np.float32) / 255
        rule = _token_shares(colour_rule_masks(image, list(prompted), names, design), grid)
        perfect = _token_shares(np.stack([label == c for c in prompted]), grid)
        out["colour rule"].append(_statistics(rule, prompted, label, thresholds, n))
        out["perfect maps"].append(_statistics(perfect, prompted, label, thresholds, n))
        out["all background"].append(class_statistics(np.zeros_like(label), label, n)[None])
    return {name: np.stack(values, axis=1) for name, values in out.items()}


def _best(val: np.ndarray) -> tuple[int, ...]:
    """The index (threshold, …) of the best val mIoU over (threshold, sample, …, 3, C) statistics."""
    grid = miou_of(val.sum(1, dtype=np.int64))
    return tuple(int(i) for i in np.unravel_index(int(np.nanargmax(grid)), grid.shape))


def _pick(stats: np.ndarray, index: tuple[int, ...]) -> np.ndarray:
    """(threshold, sample, …, 3, C) → (sample, 3, C) at (threshold, …) = index."""
    return stats[index[0]][(slice(None), *index[1:])]


def _summary(test: np.ndarray, val: np.ndarray, index, thresholds, **where) -> dict:
    chosen = _pick(test, index)
    return {
        **where,
        "background_threshold": thresholds[index[0]],
        "val_miou": round(float(miou_of(_pick(val, index).sum(0, dtype=np.int64))), 4),
        "test_miou": round(float(miou_of(chosen.sum(0, dtype=np.int64))), 4),
        "test_ci": [round(x, 4) for x in miou_interval(chosen, RESAMPLES)],
    }


def _difference(reference: np.ndarray, model: np.ndarray) -> dict:
    d = paired_miou_difference(reference, model, RESAMPLES)
    return {"delta": round(d["delta"], 4), "ci": [round(d["ci_low"], 4), round(d["ci_high"], 4)]}


def grounding(params, model_dir: str, name: str, references: dict | None = None) -> dict:
    """Val-chosen readings of one organism and of the references, on test, with paired differences."""
    thresholds = list(params.evaluate.background_thresholds)
    data = {split: open_prepared(Path(params.prepare.output) / f"{split}.zarr").load() for split in ("val", "test")}
    stats = {}
    for split in ("val", "test"):
        store = attention_store(params, model_dir, name, split)
        grid = (store.sizes["y"], store.sizes["x"])
        stats[split] = attention_statistics(store, data[split], thresholds)
        stats[split] |= (references or {}).get(split) or reference_statistics(params, data[split], grid, thresholds)
    val, test = stats["val"], stats["test"]
    layers, sigmas = list(range(val["block"].shape[2])), [float(s) for s in store.sigma.values]
    t, layer, sigma = _best(val["block"])
    others = [other for other in layers if other != layer]
    runner = _best(val["block"][:, :, others])
    runner = (runner[0], others[runner[1]], runner[2])
    readings = {
        "expert": _summary(
            test["block"], val["block"], (t, layer, sigma), thresholds, block=layer, sigma=sigmas[sigma]
        ),
        "runner-up": _summary(
            test["block"], val["block"], runner, thresholds, block=runner[1], sigma=sigmas[runner[2]]
        ),
    }
    mean_index = _best(val["blocks mean"])
    readings["blocks mean"] = _summary(
        test["blocks mean"], val["blocks mean"], mean_index, thresholds, sigma=sigmas[mean_index[1]]
    )
    for reference in ("all background", "colour rule", "perfect maps"):
        steps = thresholds if reference != "all background" else [None]
        readings[reference] = _summary(test[reference], val[reference], _best(val[reference]), steps)
    chosen = {
        "expert": _pick(test["block"], (t, layer, sigma)),
        "runner-up": _pick(test["block"], runner),
        "blocks mean": _pick(test["blocks mean"], mean_index),
        **{r: _pick(test[r], _best(val[r])) for r in ("all background", "colour rule", "perfect maps")},
    }
    several = data["test"].present.values[:, 1:].sum(1) >= 2
    per_block = miou_of(test["block"][t, :, :, sigma].sum(0, dtype=np.int64))
    return {
        "model": model_dir,
        "readings": readings,
        "expert_minus": {other: _difference(chosen[other], chosen["expert"]) for other in chosen if other != "expert"},
        "two_or_more_objects": {
            "images": int(several.sum()),
            "test_miou": {r: round(float(miou_of(s[several].sum(0, dtype=np.int64))), 4) for r, s in chosen.items()},
            "expert_minus": {
                other: _difference(chosen[other][several], chosen["expert"][several])
                for other in ("colour rule", "all background")
            },
        },
        "per_block_test_miou": [round(float(v), 4) for v in per_block],
        "references": {
            split: {r: stats[split][r] for r in ("all background", "colour rule", "perfect maps")}
            for split in ("val", "test")
        },
    }


def random_init(params, model_dir: str, directory: str) -> str:
    """Saves the organism's architecture at random init (same vocabulary) to `directory`; returns it."""
    words = OrganismPipeline.from_pretrained(model_dir).tokenizer.get_vocab()
    OrganismPipeline.build(
        sorted(w for w in words if not w.startswith("[")),
        Architecture.from_params(params.pretrain.architecture, params.prepare.resolution),
        seed=params.pretrain.seed,
    ).save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="organism directory (default: model.path of params.yaml)")
    parser.add_argument("--random-init", action="store_true", help="also the same architecture at random init")
    parser.add_argument("--out", default=None, help="also write the report (JSON) here")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting, as the flows take")
    args = parser.parse_args()
    params = load_params(overrides=parse_assignments(args.set))
    model = args.model or params.model.path
    result = grounding(params, model, Path(model).name)
    report = {"trained": result}
    if args.random_init:
        untrained = random_init(params, model, "/tmp/seg4diff-random-organism")
        report["random init"] = grounding(params, untrained, "random", result["references"])
    for value in report.values():
        value.pop("references")
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
