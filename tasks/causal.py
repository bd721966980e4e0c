"""Task of the causal stage: perturb each layer's image→text attention during generation and measure the damage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from prefect import task

from seg4diff.backbones.backbone import load_backbone, model_digest
from seg4diff.capture.families import all_layers
from seg4diff.config import Params
from seg4diff.data.prepared import prepared_split, require_captions
from seg4diff.errors import ConfigError
from seg4diff.evaluation.causal import causal_table
from seg4diff.evaluation.run_cache import RunCache
from seg4diff.prompts import prompt_style


@task(name="causal-analysis")
def causal_task(params: Params, expert_layer: int | None = None) -> tuple[pd.DataFrame, dict]:
    """Returns the tidy causal table (with the expert − other layers contrasts when `expert_layer` is given) and the
    generated examples (baseline and per layer × perturbation at full strength)."""
    p = params.causal
    backbone = load_backbone(params.model)
    prepared = prepared_split(params, p.split)
    require_captions(prepared, p.split, "the causal stage (it generates from captions)")
    layers = p.layers if p.layers is not None else all_layers(backbone.transformer)
    if prepared.sizes["sample"] < p.captions:
        raise ConfigError(
            f"causal.captions is {p.captions} but split '{p.split}' has {prepared.sizes['sample']} captions: lower "
            "causal.captions, or choose a larger causal.split (the organism's: data.shapes.num_val, num_test)"
        )
    captions = [str(c) for c in prepared["caption"].values[: p.captions]]
    style = prompt_style(params.prompt, "gt_classes")
    settings = {  # what decides the run's numbers: a rerun of these settings resumes from causal.work_dir
        "causal": p.model_dump(mode="json", exclude={"output", "work_dir"}),
        "model": [params.model.model_dump(mode="json"), model_digest(params.model)],
        "prepared": prepared.attrs.get("digest"),
        "prompt": params.prompt.model_dump(mode="json"),
        "layers": layers,
        "clip_model": params.evaluate.clip_model,
        "design": params.data.shapes.design,
        "expert_layer": expert_layer,
    }
    cache = RunCache(p.work_dir, json.dumps(settings, sort_keys=True))
    return causal_table(
        backbone,
        captions,
        prepared,
        style,
        p,
        layers,
        params.evaluate.clip_model,
        expert_layer=expert_layer,
        design=params.data.shapes.design,
        cache=cache,
    )


def example_panels(examples: dict, layers: list[int], kind: str, count: int = 4) -> tuple[np.ndarray, list[str]]:
    """Returns (panels, titles): `count` captions generated unperturbed, then with `kind` at every layer."""
    panels, titles = [], []
    for i in range(min(count, len(examples["baseline"]))):
        panels.append(examples["baseline"][i])
        titles.append("unperturbed")
        for layer in layers:
            panels.append(examples[(layer, kind)][i])
            titles.append(f"{kind} @ {layer}")
    return np.stack(panels), titles
