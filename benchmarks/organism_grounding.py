"""Does grounding emerge in the shipped Shapes organism? Extracts image→text attention on the TEST split (--split val
to compare training recipes) for the shipped model and for the same architecture at random init, scores every block
(head mean, the params' prompt and background settings), and reports the best block, the median block, the
all-layers-mean reference, all-background, and the best block when a class is represented by its shape word alone.

    .venv/bin/python benchmarks/organism_grounding.py [--model DIR] [--split val]   # default: model.path, test
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from seg4diff.attention_store import StoreLayout, open_attention
from seg4diff.config import load_params
from seg4diff.data.prepared import label_sizes, open_prepared
from seg4diff.data.shapes import SHAPES
from seg4diff.extract import extract_range, fingerprint, open_or_create, resolve_sigmas
from seg4diff.metrics import confusion_matrix, summarize
from seg4diff.models import load_backbone, model_digest
from seg4diff.organism import Architecture, OrganismPipeline
from seg4diff.scoring import miou_of, score_store


def grounding(params, model_dir: str, name: str, split: str) -> dict:
    params = params.model_copy(update={"model": params.model.model_copy(update={"path": model_dir})})
    p = params.extract.model_copy(update={"directions": ["image_to_text"], "diagnostics": False, "head_mean": True, "split": split})
    backbone = load_backbone(params.model)
    data = open_prepared(Path(params.prepare.output) / f"{split}.zarr")
    grid = backbone.token_grid(data.sizes["y"], data.sizes["x"])
    sigmas = resolve_sigmas(backbone, p, grid[0] * grid[1])
    layers = list(range(len(backbone.transformer.transformer_blocks)))
    path = Path(f"/tmp/seg4diff-grounding-{name}-{split}.zarr")
    layout = StoreLayout(data.sizes["sample"], layers, [-1], sigmas, p.max_tokens, grid, ("image_to_text",))
    attrs = {"fingerprint": fingerprint(params.model.model_dump(), model_digest(params.model), p.model_dump(), sigmas), "split": split}
    open_or_create(path, layout, attrs)
    extract_range(backbone, data, path, 0, data.sizes["sample"], sigmas, layers, p)
    store = open_attention(path)
    result = {}
    for label, tokens in (("class phrase", store), ("shape word only", _shape_words_only(store))):
        tables = score_store(tokens, data["label"], data.sizes["class"], params.prompt.threshold, progress=False,
                             sizes=label_sizes(data))
        grid_miou = miou_of(tables.per_sample[:, 0].sum(axis=0, dtype=np.int64))  # (layer, sigma)
        best_l, best_t = np.unravel_index(np.nanargmax(grid_miou), grid_miou.shape)
        result[label] = {"best_block": layers[best_l], "sigma": sigmas[best_t], "best_miou": float(grid_miou[best_l, best_t]),
                         "median_block_miou": float(np.median(grid_miou[:, best_t])),
                         "all_layers_mean_maps": float(np.nanmax(miou_of(tables.layer_mean[0]))),
                         "per_block": [round(float(v), 3) for v in grid_miou[:, best_t]]}
    return result


def _shape_words_only(store):
    """The store with every colour-word token marked as belonging to no class (shape words and "background" kept)."""
    is_shape = np.isin([[str(t) for t in row] for row in store.token_text.values], [*SHAPES, "background"])
    return store.assign(token_class=(("sample", "token"), np.where(is_shape, store.token_class.values, -1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="organism directory (default: model.path of params.yaml)")
    parser.add_argument("--split", default="test", help="val to compare training recipes; test to report")
    args = parser.parse_args()
    params = load_params()
    shipped = args.model or params.model.path
    random_dir = "/tmp/seg4diff-random-organism"
    words = OrganismPipeline.from_pretrained(shipped).tokenizer.get_vocab()
    OrganismPipeline.build(sorted(w for w in words if not w.startswith("[")),
                           Architecture.from_params(params.pretrain.architecture, params.prepare.resolution),
                           seed=params.pretrain.seed).save_pretrained(random_dir)
    data = open_prepared(Path(params.prepare.output) / f"{args.split}.zarr")
    background = sum(confusion_matrix(np.zeros_like(label), label, data.sizes["class"]) for label in data["label"].values)
    report = {"split": args.split, "shipped": grounding(params, shipped, "shipped", args.split),
              "random_init": grounding(params, random_dir, "random", args.split),
              "all_background_miou": summarize(background)["miou"]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
