"""Readouts: the ways MM-DiT attention methods turn one forward's attention into per-class maps, scored alike.

Every readout has one interface: `fit(val)` makes its choices on the selection split (a block, a head, weights),
then `maps(attention, classes)` turns one image's class attention — (layer, head, σ, class, y, x), the head-level
image→text maps of every stored block and noise level summed over each class's tokens — into (class, y, x) maps of
its prompted classes. The harness
(`readout_table`) then reads every readout's maps the same way (argmax over the prompted classes, background below a
fraction of the image's peak), chooses that fraction on the selection split per readout, and reports each on the
report split with its interval and the paired difference to `paper`:

- `paper`: one block, head mean, one σ — Seg4Diff's expert (the select stage's choice, results/expert.json);
- `blocks-mean`: every block's maps averaged (head mean, at its own val-chosen σ);
- `top-k`: the k blocks best on val averaged (at the expert's σ);
- `best-head`: the single (block, head, σ) best on val;
- `daam`: DAAM's aggregation: the maps summed over every stored σ, block and head;
- `learned`: a ridge-regularised linear model over (block, head, σ) fitted on val to each class's share of every
  token's pixels (the ground-truth area maps), read like the attention;
- `concept-attention`: ConceptAttention's concept tokens through the text stream (`seg4diff.capture.concepts`), the
  softmax over concepts of its output-space scores, averaged over the k layers best on val at the σ best on val;
- `probe`: a linear probe on the expert block's image features at its σ, trained on val — an upper reference, not a
  readout of attention.

The last two need a forward of the model (`seg4diff.evaluation.model_readouts`); their input per image replaces the
store's class attention, and `maps(input, classes)` is the one interface all share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from seg4diff.data.attention_store import load_samples
from seg4diff.data.prepared import native_label
from seg4diff.evaluation.metrics import class_statistics, miou_of
from seg4diff.evaluation.statistics import miou_interval, paired_miou_difference
from seg4diff.segmentation.masks import class_maps, predict


@dataclass
class Split:
    """One split's readout inputs: per image its class attention (layer, head, σ, class, y, x), the class ids of its
    class axis, and its native label map."""

    attention: list[np.ndarray]
    classes: list[np.ndarray]
    labels: list[np.ndarray]
    num_classes: int


def statistics(split: Split, maps: list[np.ndarray], threshold: float) -> np.ndarray:
    """Returns per-image class statistics (image, 3, C) of `maps` ((class, y, x) per image) read at `threshold`."""
    return np.stack(
        [
            class_statistics(
                predict(m, classes, label.shape, threshold),
                label,
                split.num_classes,
                predicted_classes=np.union1d(classes, [0]),
            )
            for m, classes, label in zip(maps, split.classes, split.labels)
        ]
    )


def _grid_miou(split: Split, reduce) -> np.ndarray:
    """Returns the val mIoU (at threshold 0.2, the reading's default) of `reduce(attention)` → (…, class, y, x) maps
    for every leading index (…), to rank blocks, heads or σ before the threshold is chosen."""
    per_image = [
        class_statistics(
            predict(reduce(a), c, label.shape, 0.2), label, split.num_classes, predicted_classes=np.union1d(c, [0])
        )
        for a, c, label in zip(split.attention, split.classes, split.labels)
    ]
    return miou_of(np.sum(per_image, axis=0, dtype=np.int64))


@dataclass
class Readout:
    """A way of reading the stored attention; `choice` says what fit chose (for the table)."""

    name: str
    choice: dict = field(default_factory=dict)
    reads: ClassVar[str] = "attention"  # what the readout reads, for the table

    def fit(self, val: Split) -> None:
        """Makes the readout's choices on the selection split (none by default)."""

    def maps(self, attention: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Returns one image's (class, y, x) maps of its prompted `classes` from the readout's input."""
        raise NotImplementedError


@dataclass
class Paper(Readout):
    """Seg4Diff: one block's head-mean maps at one σ (indices into the store's layer and σ axes)."""

    layer: int = 0
    sigma: int = 0

    def maps(self, attention, classes):
        return attention[self.layer, :, self.sigma].mean(0)


@dataclass
class BlocksMean(Readout):
    """Every block's head-mean maps averaged, at the σ best on val."""

    sigma: int = 0

    def fit(self, val):
        self.sigma = int(np.nanargmax(_grid_miou(val, lambda a: a.mean(axis=(0, 1)))))
        self.choice = {"sigma_index": self.sigma}

    def maps(self, attention, classes):
        return attention[:, :, self.sigma].mean(axis=(0, 1))


@dataclass
class TopK(Readout):
    """The k blocks best on val (head mean, at σ index `sigma`) averaged."""

    k: int = 3
    sigma: int = 0
    layers: list[int] = field(default_factory=list)

    def fit(self, val):
        per_layer = _grid_miou(val, lambda a: a[:, :, self.sigma].mean(1))
        self.layers = sorted(int(i) for i in np.argsort(-np.nan_to_num(per_layer, nan=-1))[: self.k])
        self.choice = {"layers": self.layers, "sigma_index": self.sigma}

    def maps(self, attention, classes):
        return attention[self.layers, :, self.sigma].mean(axis=(0, 1))


@dataclass
class BestHead(Readout):
    """The single (block, head, σ) best on val."""

    index: tuple[int, int, int] = (0, 0, 0)

    def fit(self, val):
        grid = _grid_miou(val, lambda a: a)  # (layer, head, σ)
        self.index = tuple(int(i) for i in np.unravel_index(int(np.nanargmax(grid)), grid.shape))
        self.choice = dict(zip(("layer_index", "head", "sigma_index"), self.index))

    def maps(self, attention, classes):
        return attention[self.index]


@dataclass
class Daam(Readout):
    """DAAM: the maps summed over every σ, block and head (its relative reading makes sum and mean the same)."""

    def maps(self, attention, classes):
        return attention.mean(axis=(0, 1, 2))


def token_shares(label: np.ndarray, classes: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Returns (class, *grid): each class's share of every token's pixels in the label map."""
    masks = torch.from_numpy(np.stack([label == c for c in classes]).astype(np.float32))[None]
    return F.interpolate(masks, size=grid, mode="area")[0].numpy()


@dataclass
class Learned(Readout):
    """Ridge regression of each class's token-area share on the (block, head, σ) maps, fitted on val; the maps are
    standardised per feature first and `ridge` is relative to the mean feature variance."""

    reads: ClassVar[str] = "attention, weights fitted on val"
    ridge: float = 1e-2
    weights: np.ndarray | None = None

    def fit(self, val):
        features, targets = [], []
        for attention, classes, label in zip(val.attention, val.classes, val.labels):
            shares = token_shares(label, classes, attention.shape[-2:])  # (class, y, x)
            features.append(attention.reshape(-1, attention[0, 0, 0].size).T)  # (class·y·x, layer·head·σ)
            targets.append(shares.reshape(-1))
        x, y = np.concatenate(features).astype(np.float64), np.concatenate(targets).astype(np.float64)
        self.weights = _ridge(x, y, self.ridge)
        self.choice = {"features": int(len(self.weights)), "ridge": self.ridge}

    def maps(self, attention, classes):
        flat = attention.reshape(-1, attention[0, 0, 0].size).T @ self.weights
        return flat.reshape(attention.shape[-3:]).astype(np.float32)


def concept_probabilities(scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Returns ConceptAttention's maps of one image: the softmax over its concepts (axis −3 of (…, concept, y, x)
    scores) of every layer and σ, keeping the prompted `classes`' rows (the background concept after them drops)."""
    shifted = np.exp(scores - scores.max(axis=-3, keepdims=True))
    return (shifted / shifted.sum(axis=-3, keepdims=True))[..., : len(classes), :, :]


@dataclass
class ConceptAttention(Readout):
    """ConceptAttention: the softmax over concepts of its output-space scores (input per image: (layer, 1, σ,
    concept, y, x), `seg4diff.evaluation.model_readouts`), averaged over the k text-stream layers best on val at the
    σ best on val (ConceptAttention fixes FLUX's late layers 15–18 of 19; other models have no such choice)."""

    reads: ClassVar[str] = "concept attention outputs"
    k: int = 3
    sigma: int = 0
    layers: list[int] = field(default_factory=list)

    def fit(self, val):
        probabilities = Split(
            [concept_probabilities(a, c) for a, c in zip(val.attention, val.classes)],
            val.classes,
            val.labels,
            val.num_classes,
        )
        self.sigma = int(np.nanargmax(_grid_miou(probabilities, lambda a: a.mean(axis=(0, 1)))))
        per_layer = _grid_miou(probabilities, lambda a: a[:, 0, self.sigma])
        self.layers = sorted(int(i) for i in np.argsort(-np.nan_to_num(per_layer, nan=-1))[: self.k])
        self.choice = {"layers": self.layers, "sigma_index": self.sigma}

    def maps(self, attention, classes):
        return concept_probabilities(attention[self.layers, 0, self.sigma], classes).mean(0)


def _ridge(features: np.ndarray, targets: np.ndarray, ridge: float) -> np.ndarray:
    """Returns the ridge solution of targets ≈ features · w, the penalty relative to the mean feature variance."""
    gram = features.T @ features / len(features)
    penalty = ridge * np.trace(gram) / len(gram)
    return np.linalg.solve(gram + penalty * np.eye(len(gram)), features.T @ targets / len(features))


@dataclass
class Probe(Readout):
    """A linear probe — trained, an upper reference and not an attention readout: ridge regression from one layer's
    image-token features (input per image: (feature, y, x)) to every class's token-area share, fitted on val; an
    image's maps are its prompted classes' predicted shares."""

    reads: ClassVar[str] = "image features, a trained probe"
    layer: int = 0  # the store indices of the block and σ whose features it reads (for the table)
    sigma: int = 0
    ridge: float = 1e-2
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    weights: np.ndarray | None = None  # (feature + 1, class)

    def _design(self, features: np.ndarray) -> np.ndarray:
        tokens = features.reshape(len(features), -1).T.astype(np.float64)
        standard = (tokens - self.mean) / self.scale
        return np.concatenate([standard, np.ones((len(standard), 1))], 1)

    def fit(self, val):
        tokens = np.concatenate([f.reshape(len(f), -1).T for f in val.attention]).astype(np.float64)
        self.mean, self.scale = tokens.mean(0), tokens.std(0) + 1e-8
        everything = np.arange(val.num_classes)
        targets = np.concatenate(
            [
                token_shares(label, everything, f.shape[-2:]).reshape(val.num_classes, -1).T
                for f, label in zip(val.attention, val.labels)
            ]
        )
        self.weights = _ridge(np.concatenate([self._design(f) for f in val.attention]), targets, self.ridge)
        self.choice = {"layer_index": self.layer, "sigma_index": self.sigma, "features": int(len(self.mean))}

    def maps(self, attention, classes):
        predicted = self._design(attention) @ self.weights[:, classes]  # (token, class)
        return predicted.T.reshape(len(classes), *attention.shape[-2:]).astype(np.float32)


def store_readouts(expert_layer: int, expert_sigma: int, k: int = 3) -> list[Readout]:
    """Returns every store readout, `paper` first (store indices of the expert's block and σ)."""
    return [
        Paper(
            "paper",
            {"layer_index": expert_layer, "head": "mean", "sigma_index": expert_sigma},
            expert_layer,
            expert_sigma,
        ),
        BlocksMean("blocks-mean"),
        TopK(f"top-{k}", k=k, sigma=expert_sigma),
        BestHead("best-head"),
        Daam("daam"),
        Learned("learned"),
    ]


@dataclass
class Scored:
    """A readout's result: its choices, the val-chosen threshold and the report split's per-image statistics."""

    readout: Readout
    threshold: float
    val_miou: float
    report: np.ndarray  # (image, 3, C)


def score_readout(readout: Readout, val: Split, report: Split, thresholds: list[float]) -> Scored:
    """Fits `readout` on val, chooses its background threshold on val, and returns its statistics on `report`."""
    readout.fit(val)
    val_maps = [readout.maps(a, c) for a, c in zip(val.attention, val.classes)]
    per_threshold = [miou_of(statistics(val, val_maps, t).sum(0, dtype=np.int64)) for t in thresholds]
    best = int(np.nanargmax(per_threshold))
    report_maps = [readout.maps(a, c) for a, c in zip(report.attention, report.classes)]
    return Scored(
        readout, thresholds[best], float(per_threshold[best]), statistics(report, report_maps, thresholds[best])
    )


def load_split(store, prepared) -> Split:
    """Returns a complete attention store's image→text class attention with the prepared split's labels (sample k of
    the store is sample k of the split)."""
    attention, classes, labels = [], [], []
    for s in range(store.sizes["sample"]):
        sample = load_samples(store, s)
        token_class = sample.token_class.values
        prompted = np.unique(token_class[token_class >= 0])
        attention.append(class_maps(sample.image_to_text.values.astype(np.float32), token_class, prompted))
        classes.append(prompted)
        labels.append(native_label(prepared, s))
    return Split(attention, classes, labels, prepared.sizes["class"])


def readout_table(scored: list[Scored], resamples: int, seed: int) -> list[dict]:
    """Returns one row per readout: report mIoU with its 95% interval and the paired difference to the first
    (`paper`), the val-chosen threshold and the readout's choices."""
    reference = scored[0].report
    rows = []
    for result in scored:
        low, high = miou_interval(result.report, resamples, seed)
        difference = paired_miou_difference(reference, result.report, resamples, seed)
        rows.append(
            {
                "readout": result.readout.name,
                "reads": result.readout.reads,
                "miou": float(miou_of(result.report.sum(0, dtype=np.int64))),
                "ci_low": low,
                "ci_high": high,
                "minus_paper": difference["delta"],
                "minus_paper_low": difference["ci_low"],
                "minus_paper_high": difference["ci_high"],
                "val_miou": result.val_miou,
                "background_threshold": result.threshold,
                "choice": result.readout.choice,
                "images": int(result.report.shape[0]),
            }
        )
    return rows
