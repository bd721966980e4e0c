"""Tasks of the readouts stage: the report split's attention store (every block, head and σ, as the selection store),
then every readout fitted on the selection store and scored on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from prefect import task
from tqdm import tqdm

from seg4diff.backbones.backbone import load_backbone, model_digest
from seg4diff.capture.extract import extract_range, fingerprint, open_or_create
from seg4diff.config import Params
from seg4diff.data.attention_store import SCHEMA_VERSION, StoreLayout, completed, open_attention
from seg4diff.data.prepared import class_names, prepared_split
from seg4diff.evaluation.model_readouts import model_inputs
from seg4diff.evaluation.readouts import (
    ConceptAttention,
    Probe,
    Split,
    load_split,
    readout_table,
    score_readout,
    store_readouts,
)
from seg4diff.prompts import prompt_style
from seg4diff.reporting.readout_maps import readout_maps_path, write_readout_maps


def block_names(store) -> list[str]:
    """Returns the store's block name per layer ("joint 2"; a store written before names were kept: "layer 2")."""
    if "block" in store.coords:
        return [str(v) for v in store["block"].values]
    return [f"layer {int(v)}" for v in store["layer"].values]


def _report_extraction(params: Params):
    """The extract settings of the report store: extract's, on readouts.split, image→text only, at its path."""
    return params.extract.model_copy(
        update={
            "split": params.readouts.split,
            "output": params.readouts.store,
            "directions": ["image_to_text"],
            "diagnostics": False,
            "max_samples": params.readouts.max_samples,
        }
    )


@task(name="extract-report-split")
def extract_report_task(params: Params) -> dict:
    """Extracts (resuming: a complete sample is never recomputed) the report split's image→text attention at the
    selection store's blocks, heads and σ; returns its sample count."""
    selection = open_attention(Path(params.extract.output))
    p = _report_extraction(params)
    prepared = prepared_split(params, p.split)
    samples = min(prepared.sizes["sample"], p.max_samples or prepared.sizes["sample"])
    layers = [int(v) for v in selection["layer"].values]
    heads = [int(v) for v in selection["head"].values]
    sigmas = [float(v) for v in selection["sigma"].values]
    blocks = tuple(block_names(selection))
    grid = (selection.sizes["y"], selection.sizes["x"])
    layout = StoreLayout(samples, layers, heads, sigmas, p.max_tokens, grid, ("image_to_text",), False, blocks)
    attrs = {
        "fingerprint": fingerprint(
            SCHEMA_VERSION,
            params.model.model_dump(),
            model_digest(params.model),
            p.model_dump(exclude={"workers", "batch_size", "output"}),
            params.prompt.model_dump(),
            sigmas,
            prepared.attrs["digest"],
        ),
        "split": p.split,
        "prepared_digest": prepared.attrs["digest"],
    }
    path = Path(p.output)
    print(open_or_create(path, layout, attrs))
    backbone = load_backbone(params.model)
    with tqdm(total=samples, desc=f"extract {p.split}", unit="sample") as bar:
        bar.update(int(completed(path)[:samples].sum()))
        extract_range(
            backbone, prepared, path, 0, samples, sigmas, layers, p, prompt_style(params.prompt, p.prompt), bar
        )
    return {"samples": samples}


def _model_splits(params: Params, stores: dict, prepared: dict, splits: dict, probe: tuple[int, int]) -> dict:
    """Returns, per model readout, its {"val", "report"} inputs (the class axes and labels of `splits`): the forward of
    every stored sample with the store's prompt, noise and σ — ConceptAttention's concept scores, the probe block's
    image features."""
    backbone = load_backbone(params.model)
    inputs = {}
    for name, store in stores.items():
        with tqdm(total=store.sizes["sample"], desc=f"concepts and features, {name}", unit="sample") as bar:
            inputs[name] = model_inputs(
                backbone,
                prepared[name],
                store,
                class_names(prepared[name]),
                params.extract.seed,
                probe,
                params.readouts.concept_tokens,
                params.extract.batch_size,
                bar,
            )
    return {
        readout: {
            name: Split(getattr(inputs[name], attribute), split.classes, split.labels, split.num_classes)
            for name, split in splits.items()
        }
        for readout, attribute in (("concept-attention", "concepts"), ("probe", "features"))
    }


@task(name="score-readouts")
def score_readouts_task(params: Params) -> list[dict]:
    """Fits every readout on the selection store (extract.split), scores it on the report store; returns the table
    rows (`paper` first)."""
    r = params.readouts
    stores = {"val": open_attention(Path(params.extract.output)), "report": open_attention(Path(r.store))}
    prepared = {
        "val": prepared_split(params, params.extract.split).load(),
        "report": prepared_split(params, r.split).load(),
    }
    splits = {name: load_split(stores[name], prepared[name]) for name in stores}
    expert = json.loads(Path(params.select.output).read_text())
    layer = [int(v) for v in stores["val"]["layer"].values].index(int(expert["layer"]))
    sigma = int(np.argmin(np.abs(stores["val"]["sigma"].values - float(expert["sigma"]))))
    thresholds = list(params.evaluate.background_thresholds)
    model = _model_splits(params, stores, prepared, splits, (layer, sigma))
    readouts = [
        *store_readouts(layer, sigma, r.top_k),
        ConceptAttention("concept-attention", k=r.top_k),
        Probe("probe", layer=layer, sigma=sigma),
    ]
    inputs = {x.name: model.get(x.name, splits) for x in readouts}  # readout → its {"val", "report"} inputs
    scored = [score_readout(x, inputs[x.name]["val"], inputs[x.name]["report"], thresholds) for x in readouts]
    rows = readout_table(scored, r.bootstrap_resamples, r.seed)
    names = block_names(stores["val"])
    for row, result in zip(rows, scored):
        row["blocks"] = _block_names(result.readout, names)
    val = {name: split["val"] for name, split in inputs.items()}
    count = min(params.explore.samples, len(val["paper"].attention))
    maps = [
        np.stack([x.readout.maps(val[x.readout.name].attention[s], val[x.readout.name].classes[s]) for x in scored])
        for s in range(count)
    ]
    write_readout_maps(readout_maps_path(r.store), rows, [x.threshold for x in scored], maps)
    return rows


def _block_names(readout, names: list[str]) -> str:
    """The blocks a readout reads, by name (for the table)."""
    choice = readout.choice
    if "layers" in choice:
        return ", ".join(names[i] for i in choice["layers"])
    if "layer_index" in choice:
        return names[choice["layer_index"]] + (f", head {choice['head']}" if "head" in choice else "")
    return "all"
