"""Zero-shot segmentation with one layer's image→text attention (head mean), as Seg4Diff does it.

Two predictors read the layer: `probability` (the paper's: head-mean softmax probabilities, argmax over classes,
background below `background_threshold` × the image's peak) and `logit` (what MAGNET's focal and dice losses are trained
on: head-mean pre-softmax logits, argmax over classes, background where the best class's sigmoid is below ½). The
reading — predictor and, for `probability`, background threshold — is chosen on a val split (`choose_reading`): the
threshold sets how good the same maps look (perfect area maps score far higher at another one).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import xarray as xr

from seg4diff.backbones.backbone import Backbone, PromptEncoding, pixels_of
from seg4diff.backbones.noise import sample_noise
from seg4diff.capture.attention import capture_attention
from seg4diff.config import PromptParams
from seg4diff.data.prepared import class_names, label_sizes, pad_label
from seg4diff.evaluation.metrics import confusion_matrix, summarize
from seg4diff.prompts import PromptStyle, build_prompt, prompt_style, token_slots
from seg4diff.segmentation.masks import class_maps, predict

Predictor = Literal["probability", "logit"]


@dataclass(frozen=True)
class Readout:
    """How one layer's attention becomes a segmentation: the layer, the noise level σ and the noise seed of the one
    forward, how prompts are built (`style`), background below `background_threshold` × the image's peak (None:
    background is a prompted word), and the predictor that reads the maps. Built from the settings by `for_expert`."""

    layer: int
    sigma: float
    seed: int
    style: PromptStyle
    background_threshold: float | None
    predictor: Predictor = "probability"

    @classmethod
    def for_expert(cls, expert: dict, prompt: PromptParams, seed: int, predictor: Predictor = "probability") -> Readout:
        """The readout of the selected expert (results/expert.json) with GT-class prompts built as `prompt` says."""
        return cls(
            int(expert["layer"]),
            float(expert["sigma"]),
            seed,
            prompt_style(prompt, "gt_classes"),
            prompt.threshold,
            predictor,
        )


@torch.no_grad()
def expert_maps(
    backbone: Backbone,
    rows: xr.Dataset,
    sample_indices: list[int],
    readout: Readout,
    encoding: PromptEncoding,
    positions: torch.Tensor | list[int] | None = None,
) -> np.ndarray:
    """Returns head-mean image→text maps (batch, token, y, x) of one layer for a loaded batch, with seeded noise at σ:
    softmax probabilities, or pre-softmax logits for the `logit` predictor (readout.predictor).

    `positions`: the text positions to keep, (token,) or (batch, token); None keeps every text position.
    """
    images = pixels_of(rows["image"].values)
    latents = backbone.encode_images(images)
    noise = torch.stack([sample_noise(latents.shape[1:], readout.seed, i) for i in sample_indices]).to(latents)
    output = "logits" if readout.predictor == "logit" else "probabilities"
    sigma = readout.sigma
    with capture_attention(
        backbone.transformer, [readout.layer], ("image_to_text",), positions, head_mean=True, output=output
    ) as cap:
        backbone.transformer(**backbone.transformer_inputs(sigma * noise + (1 - sigma) * latents, sigma, encoding))
    maps = cap.tensor("image_to_text")[:, 0, 0].transpose(-1, -2)  # (batch, token, image_token)
    return maps.reshape(*maps.shape[:2], *backbone.token_grid(*images.shape[2:])).float().cpu().numpy()


@torch.no_grad()
def prompted_class_maps(
    backbone: Backbone, rows: xr.Dataset, sample_indices: list[int], readout: Readout
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Returns, for each image of a loaded batch, its prompted classes' maps (class, y, x) at the token grid and
    their class ids: one forward, which `read_class_maps` turns into predictions at any background threshold."""
    style = readout.style
    names = class_names(rows)
    built = [
        build_prompt(style, rows["present"].values[k], names, str(rows["caption"].values[k]))
        for k in range(len(sample_indices))
    ]
    encoding = backbone.encode_prompts([prompt for prompt, _ in built])
    width = max(len(encoding.tokens[0]), 1)
    slots = [
        token_slots(encoding, k, spans, "class", width, str(i), style.columns)
        for k, ((_, spans), i) in enumerate(zip(built, sample_indices))
    ]
    used = max(int((s.position >= 0).sum()) for s in slots) or 1
    positions = torch.from_numpy(np.stack([s.position[:used] for s in slots]).astype(np.int64))
    maps = expert_maps(backbone, rows, sample_indices, readout, encoding, positions.clamp_min(0))
    per_image = []
    for k, slot in enumerate(slots):
        token_class = slot.class_id[:used].copy()
        token_class[slot.position[:used] < 0] = -1
        prompted = np.unique(token_class[token_class >= 0])
        per_image.append((class_maps(maps[k], token_class, prompted), prompted))
    return per_image


def read_class_maps(
    maps: np.ndarray, prompted: np.ndarray, size: int | tuple[int, int], readout: Readout
) -> np.ndarray:
    """Returns one image's prediction of `size` from its prompted classes' maps (class, y, x), read by
    `readout.predictor` at `readout.background_threshold`."""
    background_threshold = readout.background_threshold
    if readout.predictor == "logit":  # its own background rule: sigmoid below ½; the threshold only says it is on
        return predict(maps, prompted, size, background_logit=None if background_threshold is None else 0.0)
    return predict(maps, prompted, size, background_threshold)


def _predictions(per_image: list, rows: xr.Dataset, readout: Readout) -> np.ndarray:
    """(batch, label_y, label_x) predictions of `prompted_class_maps`' output, padded to the store's label shape."""
    return np.stack(
        [
            pad_label(read_class_maps(maps, prompted, size, readout), rows["label"].shape[1:])
            for (maps, prompted), size in zip(per_image, label_sizes(rows))
        ]
    )


def segment_batch(backbone: Backbone, rows: xr.Dataset, sample_indices: list[int], readout: Readout) -> np.ndarray:
    """Returns predictions (batch, label_y, label_x) for a loaded batch of prepared samples: each at its own label
    size, padded with the ignore index to the store's label shape."""
    return _predictions(prompted_class_maps(backbone, rows, sample_indices, readout), rows, readout)


def segmentation_confusion(
    backbone: Backbone, prepared: xr.Dataset, readout: Readout, batch_size: int, limit: int | None = None
) -> np.ndarray:
    """Returns the dataset-level confusion matrix of zero-shot segmentation over (the first `limit` of) a prepared
    split."""
    num_classes = prepared.sizes["class"]
    n = min(prepared.sizes["sample"], limit or prepared.sizes["sample"])
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for start in range(0, n, batch_size):
        indices = list(range(start, min(start + batch_size, n)))
        rows = prepared.isel(sample=indices).load()
        confusion += confusion_matrix(
            segment_batch(backbone, rows, indices, readout), rows["label"].values, num_classes
        )
    return confusion


def reading_candidates(
    readout: Readout, predictors: list[Predictor], background_thresholds: list[float] | None = None
) -> list[Readout]:
    """Returns the readings of `readout`'s layer to choose from, in order: each predictor, the `probability` one at each
    of `background_thresholds` (None or empty: at readout's own). Thresholds apply only where prompts leave background
    out (readout.background_threshold not None), and `logit` has its own background rule, so it is read once."""
    thresholds = background_thresholds or [readout.background_threshold]
    candidates = []
    for predictor in dict.fromkeys(predictors):
        if predictor == "logit" or readout.background_threshold is None:
            candidates.append(replace(readout, predictor=predictor))
        else:
            candidates += [replace(readout, predictor=predictor, background_threshold=t) for t in thresholds]
    return candidates


def choose_reading(
    backbone: Backbone,
    val: xr.Dataset,
    readout: Readout,
    batch_size: int,
    predictors: list[Predictor],
    background_thresholds: list[float] | None = None,
    limit: int | None = None,
) -> tuple[Readout, dict[Readout, float]]:
    """Returns the reading (predictor, background threshold) of `readout`'s layer with the best mIoU on (the first
    `limit` of) `val`, and each candidate's mIoU there (`reading_candidates`, in order; the first best wins a tie): the
    test split never chooses it. One forward per predictor and batch serves every threshold."""
    candidates = reading_candidates(readout, predictors, background_thresholds)
    num_classes = val.sizes["class"]
    n = min(val.sizes["sample"], limit or val.sizes["sample"])
    confusions = {c: np.zeros((num_classes, num_classes), np.int64) for c in candidates}
    for start in range(0, n, batch_size):
        indices = list(range(start, min(start + batch_size, n)))
        rows = val.isel(sample=indices).load()
        for predictor in dict.fromkeys(c.predictor for c in candidates):
            per_image = prompted_class_maps(backbone, rows, indices, replace(readout, predictor=predictor))
            for candidate in (c for c in candidates if c.predictor == predictor):
                confusions[candidate] += confusion_matrix(
                    _predictions(per_image, rows, candidate), rows["label"].values, num_classes
                )
    curve = {c: summarize(confusion)["miou"] for c, confusion in confusions.items()}
    return max(curve, key=curve.get), curve


def choose_predictor(
    backbone: Backbone,
    val: xr.Dataset,
    readout: Readout,
    batch_size: int,
    predictors: list[Predictor],
    limit: int | None = None,
) -> tuple[Predictor, dict[str, float]]:
    """Returns the predictor with the best mIoU on (the first `limit` of) `val` when it reads `readout`'s layer at its
    background threshold, and each predictor's mIoU there: the test split never chooses it."""
    best, curve = choose_reading(backbone, val, readout, batch_size, predictors, None, limit)
    return best.predictor, {c.predictor: miou for c, miou in curve.items()}
