"""Evaluation on the test split: open-vocabulary (two prompt protocols) and unsupervised segmentation at the expert
layer, at each image's label size (native by default), plus generation fidelity — for the base model and the fine-tuned one."""
from __future__ import annotations

import numpy as np
import torch
import xarray as xr
from tqdm import tqdm

from seg4diff.data.prepared import label_sizes, native_label, pad_label
from seg4diff.extract import ClassSpan, PromptStyle, build_prompt, column_positions, token_slots
from seg4diff.masks import class_maps, predict
from seg4diff.metrics import confusion_matrix, summarize
from seg4diff.models import Backbone
from seg4diff.segment import expert_maps, segment_batch
from seg4diff.unsupervised import match_dataset, match_per_image, merge_token_maps


def vocabulary_prompts(backbone: Backbone, class_names: list[str], style: PromptStyle) -> list[tuple[str, list[ClassSpan]]]:
    """Returns the whole vocabulary as few prompts as fit every tokenizer (no class cut between two prompts)."""
    style = PromptStyle("gt_classes", style.separator, style.background, style.columns)  # each prompt names its chunk of classes
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
def vocabulary_predictions(backbone: Backbone, rows: xr.Dataset, indices: list[int], layer: int, sigma: float, seed: int,
                           prompts: list[tuple[str, list[ClassSpan]]], background_threshold: float | None, columns: str) -> np.ndarray:
    """Returns predictions over the whole vocabulary: one forward per prompt (same noise), class maps merged, argmax."""
    merged, ids = [], []
    for prompt, spans in prompts:
        encoding = backbone.encode_prompts([prompt] * len(indices))
        slot = token_slots(encoding, 0, spans, "class", len(encoding.tokens[0]), prompt, columns)
        used = int((slot.position >= 0).sum())
        maps = expert_maps(backbone, rows, indices, layer, sigma, seed, encoding, slot.position[:used].tolist())
        classes = np.array([s.class_id for s in spans])
        merged.append(class_maps(maps, slot.class_id[:used], classes))
        ids.append(classes)
    maps, classes = np.concatenate(merged, axis=1), np.concatenate(ids)
    return np.stack([pad_label(predict(maps[k], classes, size, background_threshold), rows["label"].shape[1:])
                     for k, size in enumerate(label_sizes(rows))])


@torch.no_grad()
def unsupervised_clusters(backbone: Backbone, rows: xr.Dataset, indices: list[int], layer: int, sigma: float, seed: int,
                          kl_threshold: float, columns: str) -> list[np.ndarray]:
    """Returns one cluster map per image from the empty prompt's attention over every text position of `columns`."""
    encoding = backbone.encode_prompts([""] * len(indices))
    maps = expert_maps(backbone, rows, indices, layer, sigma, seed, encoding, column_positions(encoding, 0, columns))
    return [merge_token_maps(m, kl_threshold, size) for m, size in zip(maps, label_sizes(rows))]


def evaluate_segmentation(backbone: Backbone, test: xr.Dataset, layer: int, sigma: float, seed: int, batch_size: int,
                          kl_threshold: float, style: PromptStyle, background_threshold: float | None,
                          limit: int | None = None, progress: bool = True) -> tuple[dict, dict]:
    """Returns ({protocol: summary}, {sample index: gt_classes prediction} for the gallery)."""
    names = [str(n) for n in test["class_name"].values]
    num_classes = len(names)
    n = min(test.sizes["sample"], limit or test.sizes["sample"])
    prompts = vocabulary_prompts(backbone, names, style)
    confusion = {"gt_classes": np.zeros((num_classes, num_classes), np.int64), "vocabulary": np.zeros((num_classes, num_classes), np.int64)}
    clusters, labels, gallery = [], [], {}
    for start in tqdm(range(0, n, batch_size), desc="evaluate", unit="batch", disable=not progress):
        indices = list(range(start, min(start + batch_size, n)))
        rows = test.isel(sample=indices).load()
        target = rows["label"].values
        oracle = segment_batch(backbone, rows, indices, layer, sigma, seed, style, background_threshold)
        confusion["gt_classes"] += confusion_matrix(oracle, target, num_classes)
        vocabulary = vocabulary_predictions(backbone, rows, indices, layer, sigma, seed, prompts, background_threshold, style.columns)
        confusion["vocabulary"] += confusion_matrix(vocabulary, target, num_classes)
        clusters += unsupervised_clusters(backbone, rows, indices, layer, sigma, seed, kl_threshold, style.columns)
        labels += [native_label(rows, k) for k in range(len(indices))]
        gallery |= dict(zip(indices, oracle))
    text_length = len(column_positions(backbone.encode_prompts([""]), 0, style.columns))
    results = {name: summarize(c) for name, c in confusion.items()}
    results["unsupervised_dataset_matching"] = match_dataset(clusters, labels, text_length, num_classes)
    results["unsupervised_per_image_matching"] = match_per_image(clusters, labels, num_classes)
    results["vocabulary"]["prompts"] = len(prompts)
    return results, gallery
