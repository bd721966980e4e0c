"""Does a layer's image→text attention carry the prompt's meaning? Perturb it during generation, layer by layer, and
measure what the images lose, paired with the unperturbed model on the same captions, noise and images.

Each (layer, perturbation) runs at full strength (α = 1) and at matched doses: P' = (1 − α)·P + α·perturb(P) with α
set per layer so that the perturbation's size — the mean L1 change of an image query's attention over the text keys,
over a generation's forwards — is `dose` × the weakest layer's full-strength size (per perturbation; for the shuffles
the weakest layer and draw, so that every layer reaches every dose with α ≤ 1). α is calibrated
on the unperturbed generation of the first `calibration_samples` captions: its forwards (every step, conditional and
unconditional rows) are recorded once and replayed with each perturbation at α = 1. On fixed inputs the size is α
times the full one exactly, so the calibrated α reaches the target there; the size during the perturbed generation,
whose trajectory moves away, is reported beside it (`perturbation_l1`).
`word_shuffle` (and `shuffle`) are averaged over `permutations` draws: each caption's effect is the mean over draws.

Measured per (layer, perturbation, dose), each as the perturbed value, the unperturbed one, their paired difference, a
95% paired-bootstrap interval, a bootstrap p-value, and — over the family of layers × perturbations at that dose, per
metric — the Holm-adjusted p-value and the Bonferroni interval:
- generated images (same captions, same initial noise): the organism's caption colour agreement (largest blob's
  colour named in the caption), object recall (share of the caption's colour-and-shape objects the shape reader
  finds), shape recall and colour recall (the same for shapes alone, colours alone), and the CLIP score when a CLIP
  model is configured;
- the flow-matching loss at fixed noise on held-out images (its relative increase);
- the perturbation's size (`perturbation_l1`, over the perturbed generation's forwards).
With the expert layer among the perturbed ones, the contrast expert − mean of the other layers (paired per caption) is
a row of its own (`comparison` "expert_vs_other_layers"); `primary_contrast` at the largest dose is pre-registered.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import xarray as xr
from tqdm import tqdm

from seg4diff.backbones.backbone import Backbone
from seg4diff.capture.families import forward_arguments
from seg4diff.capture.perturb import (
    PERMUTING,
    Perturbation,
    PromptRows,
    WordShuffle,
    perturb_attention,
    word_permutations,
)
from seg4diff.config import CausalParams
from seg4diff.data.prepared import class_names
from seg4diff.evaluation.causal_table import COLUMNS, FULL, contrast_rows, dose_label, layer_rows
from seg4diff.evaluation.fidelity import clip_scores, generate
from seg4diff.evaluation.flow_loss import flow_losses
from seg4diff.evaluation.run_cache import RunCache
from seg4diff.organism.colours import colour_hits
from seg4diff.organism.shape_reader import colour_recall, object_recall, shape_recall
from seg4diff.prompts import PromptStyle, build_prompt

EXAMPLES = 8  # generated images kept per run for the example figures


def generation_scores(
    images: np.ndarray, captions: list[str], clip_model: str | None, organism: bool, design: str = "colour_shape"
) -> dict[str, np.ndarray]:
    """Per caption: what a generated image keeps of it (organism: colour agreement, object, shape and colour recall,
    read with the Shapes `design`'s palette and shapes; CLIP score)."""
    scores = {}
    if organism:
        pairs = list(zip(images, captions))
        scores["caption_colour_agreement"] = colour_hits(images, captions, design)
        for name, recall in (("object", object_recall), ("shape", shape_recall), ("colour", colour_recall)):
            scores[f"{name}_recall"] = np.array([recall(image, caption, design) for image, caption in pairs])
    if clip_model:
        scores["clip_score"] = clip_scores(images, captions, clip_model)
    return scores


def generate_batched(backbone: Backbone, captions: list[str], settings: CausalParams, size: int) -> np.ndarray:
    """Returns images generated `settings.batch_size` captions at a time, each batch's noise seeded by its start: the
    same noise for the same caption in every run."""
    step = settings.batch_size
    return np.concatenate(
        [
            generate(
                backbone, captions[i : i + step], settings.generation_steps, settings.guidance, settings.seed + i, size
            )
            for i in range(0, len(captions), step)
        ]
    )


def flow_prompts(prepared: xr.Dataset, style: PromptStyle, limit: int) -> list[str]:
    """Returns the prompts `flow_losses` gives its first `limit` images (their present classes)."""
    names, present = class_names(prepared), prepared["present"].values[:limit]
    return [build_prompt(style, row, names, "")[0] for row in present]


def word_shuffles(backbone: Backbone, prompts: list[str], settings: CausalParams) -> list[WordShuffle]:
    """Returns one `word_shuffle` per draw over every prompt the model is given, matched to forwards by embedding."""
    prompts = list(dict.fromkeys(prompts))
    embeds, tokens = [], []
    for start in range(0, len(prompts), settings.batch_size):
        encoding = backbone.encode_prompts(prompts[start : start + settings.batch_size])
        embeds.append(encoding.prompt_embeds.float().cpu())
        tokens += encoding.tokens
    width = max(e.shape[1] for e in embeds)  # batches differ in text length where the pipeline pads to the longest
    embeds = [torch.nn.functional.pad(e, (0, 0, 0, width - e.shape[1])) for e in embeds]
    # an all-zero text, Bria's unconditional one (it never encodes ""), matches a row whose permutation moves nothing
    embeds.append(torch.zeros_like(embeds[0][:1]))
    prompts, tokens = [*prompts, ""], [*tokens, [token._replace(start=0, end=0) for token in tokens[0]]]
    rows = PromptRows(torch.cat(embeds))
    return [
        WordShuffle(rows, word_permutations(prompts, tokens, settings.seed, d)) for d in range(settings.permutations)
    ]


class Perturbations:
    """Builds the perturbation contexts of a causal run: `(layer, kind, draw, alpha)` → perturb_attention, with the
    draw's seed (shuffle: one permutation of all positions per draw) or word permutations (word_shuffle)."""

    def __init__(self, transformer: torch.nn.Module, settings: CausalParams, words: list[WordShuffle] | None):
        self.transformer, self.settings, self.words = transformer, settings, words

    def __call__(self, layer: int, kind: str, draw: int, alpha: float):
        shuffle = self.words[draw] if kind == "word_shuffle" else None
        seed = self.settings.seed + draw
        return perturb_attention(self.transformer, layer, kind, self.settings.blur_sigma, seed, alpha, shuffle)


def recorded_forwards(backbone: Backbone, captions: list[str], settings: CausalParams, size: int) -> list[dict]:
    """Returns the keyword arguments of every transformer forward of the unperturbed generation of `captions` (every
    step, CFG's rows as the sampler stacks them), their tensors on the CPU."""
    forwards = []

    def record(module, args, kwargs):
        named = forward_arguments(module, args, kwargs)
        forwards.append({k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in named.items()})

    hook = backbone.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        generate_batched(backbone, captions, settings, size)
    finally:
        hook.remove()
    return forwards


@torch.no_grad()
def calibration_l1(backbone: Backbone, forwards: list[dict], context) -> float:
    """Returns the perturbation's size (mean L1 change of an image query's attention over the text keys) over the
    recorded `forwards` replayed inside `context` (a perturb_attention context not yet entered)."""
    device = backbone.device
    with context as processor:
        for kwargs in forwards:
            backbone.transformer(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in kwargs.items()})
    return processor.l1


def calibrated_alpha(target_l1: float, full_l1: float) -> float:
    """Returns the strength α ∈ (0, 1] whose size is `target_l1` when α = 1 gives `full_l1` (the size is linear in α;
    1 where the target is out of reach)."""
    return float(min(1.0, target_l1 / max(full_l1, 1e-12)))


def _measure(
    backbone: Backbone,
    captions: list[str],
    prepared: xr.Dataset,
    style: PromptStyle,
    settings: CausalParams,
    clip_model: str | None,
    size: int,
    design: str,
    processor: Perturbation | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, float]:
    """Returns per-caption scores, per-image flow losses, the images and the perturbation's size over the generation's
    forwards (the quantity the doses are matched on; 0 unperturbed)."""
    images = generate_batched(backbone, captions, settings, size)
    size_l1 = processor.l1 if processor is not None else 0.0
    scores = generation_scores(images, captions, clip_model, backbone.family == "organism", design)
    losses = flow_losses(backbone, prepared, settings.seed, settings.flow_samples, style, tuple(settings.flow_sigmas))
    return scores, losses, images, size_l1


def causal_table(
    backbone: Backbone,
    captions: list[str],
    prepared: xr.Dataset,
    style: PromptStyle,
    settings: CausalParams,
    layers: list[int],
    clip_model: str | None = None,
    progress: bool = True,
    expert_layer: int | None = None,
    design: str = "colour_shape",
    cache: RunCache | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Returns the tidy table (COLUMNS) for every layer of `layers` × perturbation × dose (full and settings.doses),
    with the expert-vs-other-layers contrasts when `expert_layer` is among `layers`, and generated examples
    {"baseline": images, (layer, kind): full-strength images} for the figure; `clip_model` adds the CLIP score;
    `design`: the Shapes design the organism's images are read with. With a `cache` (causal.work_dir), the baseline,
    the calibration and every finished run are saved as they finish and taken from it on a rerun."""
    size = prepared.sizes["y"]
    transformer = backbone.transformer
    cache = cache or RunCache(None)
    measure = (backbone, captions, prepared, style, settings, clip_model, size, design)
    base = cache.get("baseline")
    if base is None:
        base_scores, base_losses, base_images, _ = _measure(*measure)
        base = {"losses": base_losses, "images": base_images[:EXAMPLES]}
        cache.put("baseline", base | {f"scores.{m}": v for m, v in base_scores.items()})
    else:
        base_scores = {key.removeprefix("scores."): v for key, v in base.items() if key.startswith("scores.")}
    base_losses, base_images = base["losses"], base["images"]
    kinds = settings.perturbations
    draws = {kind: settings.permutations if kind in PERMUTING else 1 for kind in kinds}
    words = None
    if "word_shuffle" in kinds:
        prompts = [*captions, "", *flow_prompts(prepared, style, settings.flow_samples)]
        words = word_shuffles(backbone, prompts, settings)
    perturbation = Perturbations(transformer, settings, words)
    cells = [(layer, kind, draw) for layer in layers for kind in kinds for draw in range(draws[kind])]
    calibration = cache.get("calibration")
    if calibration is None:
        forwards = recorded_forwards(backbone, captions[: settings.calibration_samples], settings, size)
        # each (layer, kind, draw)'s full-strength size on the recorded forwards: linear in α
        calibration = {"full_l1": [calibration_l1(backbone, forwards, perturbation(*cell, 1.0)) for cell in cells]}
        del forwards
        cache.put("calibration", calibration)
    full_l1 = dict(zip(cells, np.asarray(calibration["full_l1"]).tolist()))
    # the weakest layer's (and draw's) full size: every layer reaches every dose with α ≤ 1
    weakest = {kind: min(l1 for (_, k, _), l1 in full_l1.items() if k == kind) for kind in kinds}

    runs = {}  # (layer, kind, dose) → per-caption scores and per-image loss increase, averaged over draws
    examples = {"baseline": base_images}
    plan = [(layer, kind, dose) for layer in layers for kind in kinds for dose in [FULL, *settings.doses]]
    bar = tqdm(total=sum(draws[kind] for _, kind, _ in plan), desc="causal", unit="run", disable=not progress)
    for layer, kind, dose in plan:
        label = FULL if dose == FULL else dose_label(dose)
        name = f"run-{layer}-{kind}-{label}"
        saved = cache.get(name)
        if saved is None:
            target = np.nan if dose == FULL else dose * weakest[kind]
            alphas = [
                1.0 if dose == FULL else calibrated_alpha(target, full_l1[layer, kind, d]) for d in range(draws[kind])
            ]
            scores, increases, sizes = [], [], []
            for draw, alpha in enumerate(alphas):
                with perturbation(layer, kind, draw, alpha) as processor:
                    draw_scores, losses, images, size_l1 = _measure(*measure, processor)
                scores.append(draw_scores)
                increases.append((losses - base_losses) / base_losses)  # relative, per held-out image
                sizes.append(size_l1)
                if draw == 0:
                    shown = images[:EXAMPLES]
                bar.update()
            saved = {
                "alpha": np.mean(alphas),
                "target_l1": target,
                "calibration_l1": np.mean([a * full_l1[layer, kind, d] for d, a in enumerate(alphas)]),
                "flow_loss_increase": np.mean(increases, axis=0),
                "perturbation_l1": np.mean(sizes),
                "images": shown,
                **{f"scores.{metric}": np.mean([s[metric] for s in scores], axis=0) for metric in base_scores},
            }
            cache.put(name, saved)
        else:
            bar.update(draws[kind])
        if dose == FULL:
            examples[(layer, kind)] = saved["images"]
        runs[layer, kind, label] = {
            **{key: float(saved[key]) for key in ("alpha", "target_l1", "calibration_l1", "perturbation_l1")},
            "scores": {metric: saved[f"scores.{metric}"] for metric in base_scores},
            "flow_loss_increase": saved["flow_loss_increase"],
        }
    bar.close()
    rows = layer_rows(runs, base_scores, settings)
    if expert_layer is not None and expert_layer in layers and len(layers) > 1:
        rows += contrast_rows(runs, base_scores, settings, expert_layer)
    return pd.DataFrame(rows, columns=COLUMNS), examples
