"""Tasks of the extract stage: lay out the store once, then fill disjoint, shard-aligned sample ranges."""

from __future__ import annotations

import time
from pathlib import Path

import dask
from prefect import task
from tqdm import tqdm

from seg4diff.backbones.backbone import load_backbone, model_digest
from seg4diff.capture.extract import (
    extract_range,
    fingerprint,
    kept_token_counts,
    open_or_create,
    plan_ranges,
    resolve_sigmas,
    storage_plan,
)
from seg4diff.capture.families import all_layers, layer_names
from seg4diff.capture.intervention import check_layers
from seg4diff.config import Params
from seg4diff.data.attention_store import SCHEMA_VERSION, StoreLayout, completed, damaged_samples, discard_samples
from seg4diff.data.prepared import class_names, prepared_split, require_captions
from seg4diff.prompts import prompt_style
from tasks.retry import RETRY_TRANSIENT


def _prepared(params: Params):
    return prepared_split(params, params.extract.split)


@task(name="plan-extraction", log_prints=True)
def plan_extraction_task(params: Params) -> dict:
    """Creates the store (or keeps one with the same fingerprint, to resume it); returns the work plan."""
    p = params.extract
    prepared = _prepared(params)
    if p.prompt == "caption":
        require_captions(prepared, p.split, "extract.prompt 'caption'")
    samples = min(prepared.sizes["sample"], p.max_samples or prepared.sizes["sample"])
    backbone = load_backbone(params.model)
    resolution = [prepared.sizes["y"], prepared.sizes["x"]]
    grid = backbone.token_grid(*resolution)
    sigmas = resolve_sigmas(backbone, p, grid[0] * grid[1])
    layers = all_layers(backbone.transformer) if p.layers is None else p.layers
    heads = [-1] if p.head_mean else list(range(backbone.transformer.config.num_attention_heads))
    names = layer_names(backbone.transformer)
    blocks = tuple(names[i] for i in check_layers(layers, names))
    layout = StoreLayout(samples, layers, heads, sigmas, p.max_tokens, grid, tuple(p.directions), p.diagnostics, blocks)
    counts = kept_token_counts(backbone, prepared, samples, p, prompt_style(params.prompt, p.prompt))
    storage = storage_plan(layout, counts, Path(p.output))  # before anything is written: refuses what cannot fit
    print(
        f"storage plan: {samples} samples × {storage['mean_tokens']:.1f} kept tokens → about "
        f"{storage['expected_gb']:.2f} GB "
        f"(every slot full: {storage['upper_bound_gb']:.2f} GB); {storage['free_gb']:.1f} GB free at {p.output}"
    )
    attrs = {
        "fingerprint": fingerprint(
            SCHEMA_VERSION,
            params.model.model_dump(),
            model_digest(params.model),
            params.data.model_dump(),
            params.prepare.model_dump(),
            p.model_dump(exclude={"workers", "batch_size", "output"}),
            params.prompt.model_dump(),
            sigmas,
            prepared.attrs["digest"],  # the prepared content itself: re-prepared data is re-extracted
        ),
        "prepared_digest": prepared.attrs["digest"],
        "model": params.model.path,
        "family": backbone.family,
        "split": p.split,
        "prompt": p.prompt,
        "separator": params.prompt.separator,
        "background": params.prompt.background,
        "class_names": class_names(prepared),
        "has_background": bool(prepared.attrs["has_background"]),
        "resolution": resolution,
        "label_resolution": prepared.attrs["label_resolution"],
        "seed": p.seed,
    }
    print(open_or_create(Path(p.output), layout, attrs))
    damaged = damaged_samples(Path(p.output))
    if damaged:  # a missing or altered chunk is never taken as done: those samples are computed again, with the
        # rest of their batch, so that every sample is computed in the batch it always is (bit-identical results)
        batches = {i // p.batch_size * p.batch_size for i in damaged}
        redo = sorted({i for b in batches for i in range(b, min(b + p.batch_size, samples))} | set(damaged))
        discard_samples(Path(p.output), redo)
        print(f"{len(damaged)} damaged sample(s), recomputed with their batch {redo}: " + "; ".join(damaged.values()))
    done = int(completed(Path(p.output))[:samples].sum())
    return {
        "ranges": plan_ranges(samples, p.batch_size, p.workers),
        "sigmas": sigmas,
        "layers": layers,
        "samples": samples,
        "damaged": len(damaged),
        "already_complete": done,
        "storage": storage,
    }


@task(name="extract-range", task_run_name="extract-{start}-{stop}", **RETRY_TRANSIENT)  # a retry resumes
def extract_range_task(params: Params, start: int, stop: int, sigmas: list[float], layers: list[int]) -> dict:
    """Extracts samples [start, stop) into the store, skipping complete ones; returns counts and seconds."""
    backbone = load_backbone(params.model)
    began = time.perf_counter()
    # reads stay in this process: inside a Dask worker, dask would otherwise send them back to the busy cluster
    with (
        dask.config.set(scheduler="synchronous"),
        tqdm(total=stop - start, desc=f"extract {start}-{stop}", unit="sample") as bar,
    ):
        bar.update(int(completed(Path(params.extract.output))[start:stop].sum()))
        computed = extract_range(
            backbone,
            _prepared(params),
            Path(params.extract.output),
            start,
            stop,
            sigmas,
            layers,
            params.extract,
            prompt_style(params.prompt, params.extract.prompt),
            progress=bar,
        )
    return {"computed": computed, "seconds": time.perf_counter() - began}
