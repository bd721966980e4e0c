"""Evaluation on the test split: open-vocabulary (two prompt protocols) and unsupervised segmentation at the expert
layer, with per-image class statistics for paired intervals, at each image's label size (native by default), plus
generation fidelity — for the base model and the fine-tuned one."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import xarray as xr
from tqdm import tqdm

from seg4diff.backbones.backbone import Backbone, pixels_of
from seg4diff.backbones.noise import sample_noise
from seg4diff.capture.attention import capture_attention
from seg4diff.data.prepared import class_names, label_sizes, native_label, pad_label
from seg4diff.evaluation.metrics import class_statistics, summarize_statistics
from seg4diff.prompts import ClassSpan, PromptStyle, build_prompt, column_positions, token_slots
from seg4diff.segmentation.masks import class_maps, predict
from seg4diff.segmentation.unsupervised import match_per_image, merge_token_maps
from seg4diff.segmentation.zero_shot import Readout, expert_maps, segment_batch


def vocabulary_prompts(
    backbone: Backbone, class_names: list[str], style: PromptStyle
) -> list[tuple[str, list[ClassSpan]]]:
    """Returns the whole vocabulary as few prompts as fit every tokenizer (no class cut between two prompts)."""
    style = PromptStyle(
        "gt_classes", style.separator, style.background, style.columns
    )  # each prompt names its chunk of classes
    skip = {0} if style.background == "threshold" and class_names[0] == "background" else set()
    prompts, current = [], []
    for class_id in (c for c in range(len(class_names)) if c not in skip):
        trial = current + [class_id]
        prompt, spans = build_prompt(style, np.isin(np.arange(len(class_names)), trial), class_names, "")
        encoding = backbone.encode_prompts([prompt])
        last = spans[-1]
        fits = all(bool(encoding.positions(0, s.start, s.end)) for s in spans) and _ends_inside(encoding, last)
        if fits or not current:
            if not fits:
                raise ValueError(f"class '{class_names[class_id]}' alone does not fit the tokenizer length")
            current = trial
        else:
            prompts.append(current)
            current = [class_id]
    prompts.append(current)
    return [build_prompt(style, np.isin(np.arange(len(class_names)), ids), class_names, "") for ids in prompts]


def _ends_inside(encoding, span: ClassSpan) -> bool:
    """True when the tokens of `span` are all present (not cut by truncation) for every tokenizer."""
    tokens = [encoding.tokens[0][p] for p in encoding.positions(0, span.start, span.end)]
    by_encoder = {}
    for token in tokens:
        by_encoder.setdefault(token.encoder, []).append(token)
    return bool(by_encoder) and all(max(t.end for t in group) >= span.end for group in by_encoder.values())


@torch.no_grad()
def prompt_logits(
    backbone: Backbone, rows: xr.Dataset, indices: list[int], readout: Readout, encoding, positions: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Returns one layer's image→text logits (batch, head, token, y, x) and each image query's log-sum-exp over all
    joint keys (batch, head, y, x), with the seeded noise of `zero_shot.expert_maps`."""
    images = pixels_of(rows["image"].values)
    latents = backbone.encode_images(images)
    noise = torch.stack([sample_noise(latents.shape[1:], readout.seed, i) for i in indices]).to(latents)
    sigma = readout.sigma
    with capture_attention(
        backbone.transformer, [readout.layer], ("image_to_text",), positions, output="logits"
    ) as cap:
        backbone.transformer(**backbone.transformer_inputs(sigma * noise + (1 - sigma) * latents, sigma, encoding))
    grid = backbone.token_grid(*images.shape[2:])
    logits = cap.tensor("image_to_text")[:, 0].transpose(-1, -2)  # (batch, head, token, image_token)
    lse = cap.tensor("image_lse")[:, 0]  # (batch, head, image_token)
    return (logits.reshape(*logits.shape[:3], *grid).cpu().numpy(), lse.reshape(*lse.shape[:2], *grid).cpu().numpy())


def vocabulary_predictions(
    backbone: Backbone,
    rows: xr.Dataset,
    indices: list[int],
    readout: Readout,
    prompts: list[tuple[str, list[ClassSpan]]],
) -> np.ndarray:
    """Returns predictions over the whole vocabulary with ONE normalisation across the prompts it is split over.

    One forward per prompt (same noise). Every token's probability is renormalised with a single softmax over the
    keys of ALL the prompts' forwards: p = exp(logit − logsumexp over prompts of each forward's log-sum-exp), per head
    and pixel (separately normalised probabilities of different prompts are not comparable). Class maps are then the
    head-mean, token-mean probabilities as in `segment_batch`: with one prompt this is exactly its probabilities.
    """
    columns, background_threshold = readout.style.columns, readout.background_threshold
    logits, lses, token_classes, ids = [], [], [], []
    for prompt, spans in prompts:
        encoding = backbone.encode_prompts([prompt] * len(indices))
        slot = token_slots(encoding, 0, spans, "class", len(encoding.tokens[0]), prompt, columns)
        used = int((slot.position >= 0).sum())
        prompt_logit, lse = prompt_logits(backbone, rows, indices, readout, encoding, slot.position[:used].tolist())
        logits.append(prompt_logit)
        lses.append(lse)
        token_classes.append(slot.class_id[:used])
        ids.append(np.array([s.class_id for s in spans]))
    joint_lse = np.logaddexp.reduce(np.stack(lses), axis=0)[:, :, None]  # (batch, head, 1, y, x)
    maps = [class_maps(np.exp(l - joint_lse).mean(axis=1), t, c) for l, t, c in zip(logits, token_classes, ids)]
    maps, classes = np.concatenate(maps, axis=1), np.concatenate(ids)
    return np.stack(
        [
            pad_label(predict(maps[k], classes, size, background_threshold), rows["label"].shape[1:])
            for k, size in enumerate(label_sizes(rows))
        ]
    )


@torch.no_grad()
def empty_prompt_maps(backbone: Backbone, rows: xr.Dataset, indices: list[int], readout: Readout) -> np.ndarray:
    """Returns the empty prompt's image→text probabilities (batch, token, y, x) over every text position of the
    readout's columns."""
    encoding = backbone.encode_prompts([""] * len(indices))
    positions = column_positions(encoding, 0, readout.style.columns)
    return expert_maps(backbone, rows, indices, replace(readout, predictor="probability"), encoding, positions)


def image_statistics(predictions: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    """(image, 3, C) per-image class statistics (metrics.class_statistics) of padded predictions and labels."""
    return np.stack([class_statistics(p, t, num_classes) for p, t in zip(predictions, targets)])


def choose_kl_threshold(
    backbone: Backbone,
    val: xr.Dataset,
    readout: Readout,
    batch_size: int,
    thresholds: list[float],
    limit: int | None = None,
) -> tuple[float, dict[float, float]]:
    """Returns the grouping threshold with the best per-image-matched mIoU on (the first `limit` of) `val`, and each
    threshold's mIoU: the test split never chooses it."""
    num_classes = val.sizes["class"]
    n = min(val.sizes["sample"], limit or val.sizes["sample"])
    maps, sizes, labels = [], [], []
    for start in range(0, n, batch_size):
        indices = list(range(start, min(start + batch_size, n)))
        rows = val.isel(sample=indices).load()
        maps += list(empty_prompt_maps(backbone, rows, indices, readout))
        sizes += label_sizes(rows)
        labels += [native_label(rows, k) for k in range(len(indices))]
    curve = {
        t: match_per_image([merge_token_maps(m, t, s) for m, s in zip(maps, sizes)], labels, num_classes)["miou"]
        for t in thresholds
    }
    return max(curve, key=curve.get), curve


def evaluate_segmentation(
    backbone: Backbone,
    test: xr.Dataset,
    readout: Readout,
    batch_size: int,
    kl_threshold: float,
    limit: int | None = None,
    progress: bool = True,
    gt_classes_readout: Readout | None = None,
) -> tuple[dict, dict]:
    """Returns ({protocol: summary with per-image `stats` (image, 3, C)}, {sample index: gt_classes prediction}):
    the GT-class protocol reads `gt_classes_readout` (its reading chosen on val; None: `readout`), the vocabulary
    protocol `readout`, the unsupervised one groups the empty prompt's maps at `kl_threshold`."""
    gt_classes_readout = gt_classes_readout or readout
    names = class_names(test)
    num_classes = len(names)
    n = min(test.sizes["sample"], limit or test.sizes["sample"])
    prompts = vocabulary_prompts(backbone, names, readout.style)
    stats = {"gt_classes": [], "vocabulary": []}
    clusters, labels, gallery = [], [], {}
    for start in tqdm(range(0, n, batch_size), desc="evaluate", unit="batch", disable=not progress):
        indices = list(range(start, min(start + batch_size, n)))
        rows = test.isel(sample=indices).load()
        target = rows["label"].values
        oracle = segment_batch(backbone, rows, indices, gt_classes_readout)
        stats["gt_classes"].append(image_statistics(oracle, target, num_classes))
        vocabulary = vocabulary_predictions(backbone, rows, indices, readout, prompts)
        stats["vocabulary"].append(image_statistics(vocabulary, target, num_classes))
        maps = empty_prompt_maps(backbone, rows, indices, readout)
        clusters += [merge_token_maps(m, kl_threshold, size) for m, size in zip(maps, label_sizes(rows))]
        labels += [native_label(rows, k) for k in range(len(indices))]
        gallery |= dict(zip(indices, oracle))
    results = {}
    for protocol, parts in stats.items():
        per_image = np.concatenate(parts)
        results[protocol] = summarize_statistics(per_image) | {"stats": per_image}
    predicted = results["vocabulary"]["stats"][:, 2].sum(0)
    results["vocabulary"] |= {
        "prompts": len(prompts),
        "predicted_pixels": {name: int(c) for name, c in zip(names, predicted)},
        "never_predicted": [name for name, c in zip(names, predicted) if c == 0],
    }
    results["unsupervised_per_image_matching"] = match_per_image(clusters, labels, num_classes) | {
        "kl_threshold": kl_threshold
    }
    return results, gallery
