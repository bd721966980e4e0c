"""Task of the causal stage: perturb each block's image→text attention during generation and measure the damage."""
from __future__ import annotations

import numpy as np
import pandas as pd
from prefect import task

from seg4diff.backbones.backbone import load_backbone
from seg4diff.capture.attention import joint_attention_modules
from seg4diff.config import Params
from seg4diff.data.prepared import open_split, require_captions
from seg4diff.evaluation.causal import CausalSettings, causal_table
from seg4diff.prompts import prompt_style


@task(name="causal-analysis")
def causal_task(params: Params) -> tuple[pd.DataFrame, dict]:
    """Returns the tidy causal table and the generated examples (baseline and per block × perturbation)."""
    p = params.causal
    backbone = load_backbone(params.model)
    prepared = open_split(params.prepare.output, p.split)
    require_captions(prepared, p.split, "the causal stage (it generates from captions)")
    blocks = p.blocks if p.blocks is not None else list(range(len(joint_attention_modules(backbone.transformer))))
    settings = CausalSettings(blocks, list(p.perturbations), p.blur_sigma, p.generation_steps, p.guidance, p.flow_samples,
                              tuple(p.flow_sigmas), p.bootstrap_resamples, p.seed, params.evaluate.clip_model)
    captions = [str(c) for c in prepared["caption"].values[: p.captions]]
    return causal_table(backbone, captions, prepared, prompt_style(params.prompt, "gt_classes"), settings)


def example_panels(examples: dict, blocks: list[int], kind: str, count: int = 4) -> tuple[np.ndarray, list[str]]:
    """Returns (panels, titles): `count` captions generated unperturbed, then with `kind` at every block."""
    panels, titles = [], []
    for i in range(min(count, len(examples["baseline"]))):
        panels.append(examples["baseline"][i])
        titles.append("unperturbed")
        for block in blocks:
            panels.append(examples[(block, kind)][i])
            titles.append(f"{kind} @ {block}")
    return np.stack(panels), titles
