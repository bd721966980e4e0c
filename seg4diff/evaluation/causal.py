"""Does a layer's image→text attention carry the prompt's meaning? Perturb it during generation, layer by layer, and
measure what the images lose, paired with the unperturbed model on the same captions, noise and images.

Measured per (layer, perturbation), each as the perturbed value, the unperturbed one, their paired difference and a
95% paired-bootstrap interval of it:
- generated images (same captions, same initial noise): the organism's caption colour agreement (largest blob's
  colour named in the caption), object recall (share of the caption's colour-and-shape objects the shape reader
  finds), and the CLIP score when a CLIP model is configured;
- the flow-matching loss at fixed noise on held-out images (its relative increase);
- the perturbation's size: mean L1 change of an image query's attention over the text keys.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
from tqdm import tqdm

from seg4diff.backbones.backbone import Backbone
from seg4diff.capture.perturb import perturb_attention
from seg4diff.config import CausalParams
from seg4diff.evaluation.fidelity import clip_scores, generate
from seg4diff.evaluation.flow_loss import flow_losses
from seg4diff.evaluation.statistics import paired_mean_difference
from seg4diff.organism.colours import colour_hits
from seg4diff.organism.shape_reader import object_recall
from seg4diff.prompts import PromptStyle

COLUMNS = ["layer", "perturbation", "metric", "value", "baseline", "delta", "ci_low", "ci_high", "n"]


def generation_scores(
    images: np.ndarray, captions: list[str], clip_model: str | None, organism: bool
) -> dict[str, np.ndarray]:
    """Per caption: what a generated image keeps of it (organism: colour agreement, object recall; CLIP score)."""
    scores = {}
    if organism:
        scores["caption_colour_agreement"] = colour_hits(images, captions)
        scores["object_recall"] = np.array([object_recall(image, caption) for image, caption in zip(images, captions)])
    if clip_model:
        scores["clip_score"] = clip_scores(images, captions, clip_model)
    return scores


def _measure(
    backbone: Backbone,
    captions: list[str],
    prepared: xr.Dataset,
    style: PromptStyle,
    settings: CausalParams,
    clip_model: str | None,
    size: int,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    images = generate(backbone, captions, settings.generation_steps, settings.guidance, settings.seed, size)
    scores = generation_scores(images, captions, clip_model, backbone.family == "organism")
    losses = flow_losses(backbone, prepared, settings.seed, settings.flow_samples, style, tuple(settings.flow_sigmas))
    return scores, losses, images


def causal_table(
    backbone: Backbone,
    captions: list[str],
    prepared: xr.Dataset,
    style: PromptStyle,
    settings: CausalParams,
    layers: list[int],
    clip_model: str | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict]:
    """Returns the tidy table (COLUMNS) for every layer of `layers` × perturbation, and generated examples
    {"baseline": images, (layer, kind): images} for the figure; `clip_model` adds the CLIP score."""
    size = prepared.sizes["y"]
    base_scores, base_losses, base_images = _measure(backbone, captions, prepared, style, settings, clip_model, size)
    rows, examples = [], {"baseline": base_images}
    runs = [(layer, kind) for layer in layers for kind in settings.perturbations]
    for layer, kind in tqdm(runs, desc="causal", unit="run", disable=not progress):
        with perturb_attention(backbone.transformer, layer, kind, settings.blur_sigma, settings.seed) as processor:
            scores, losses, images = _measure(backbone, captions, prepared, style, settings, clip_model, size)
        examples[(layer, kind)] = images
        for metric, values in scores.items():
            d = paired_mean_difference(base_scores[metric], values, settings.bootstrap_resamples, settings.seed)
            rows.append((layer, kind, metric, d["b"], d["a"], d["delta"], d["ci_low"], d["ci_high"], d["n"]))
        increase = (losses - base_losses) / base_losses  # relative, per held-out image
        d = paired_mean_difference(np.zeros_like(increase), increase, settings.bootstrap_resamples, settings.seed)
        rows.append((layer, kind, "flow_loss_increase", d["delta"], 0.0, d["delta"], d["ci_low"], d["ci_high"], d["n"]))
        rows.append(
            (
                layer,
                kind,
                "perturbation_l1",
                processor.strength / max(processor.calls, 1),
                0.0,
                np.nan,
                np.nan,
                np.nan,
                0,
            )
        )
    return pd.DataFrame(rows, columns=COLUMNS), examples


def causal_summary(table: pd.DataFrame, expert_layer: int) -> dict:
    """Per perturbation and metric: the layer whose perturbation costs most, and the expert's cost and rank (1 =
    most)."""
    summary = {}
    for (kind, metric), group in table[table.metric != "perturbation_l1"].groupby(["perturbation", "metric"]):
        harm = -group.delta if metric != "flow_loss_increase" else group.delta  # larger = more damage
        order = group.assign(harm=harm.values).sort_values("harm", ascending=False).reset_index(drop=True)
        expert = order[order.layer == expert_layer]
        summary[f"{kind}.{metric}"] = {
            "most_harmful_layer": int(order.layer.iloc[0]),
            "most_harmful_delta": float(order.delta.iloc[0]),
            "expert_delta": float(expert.delta.iloc[0]) if len(expert) else float("nan"),
            "expert_ci": [float(expert.ci_low.iloc[0]), float(expert.ci_high.iloc[0])] if len(expert) else None,
            "expert_rank": int(expert.index[0]) + 1 if len(expert) else None,
            "layers": int(len(order)),
        }
    return summary
