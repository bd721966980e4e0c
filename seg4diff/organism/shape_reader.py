"""A simple, rotation-invariant reader of Shapes images: each saturated blob's colour and shape, and how many of a
caption's objects, shapes and colours an image shows. Used to measure what generated images keep of their prompt.

Design colour_shape (circle, square, triangle): shape from the blob's area relative to the disc through its farthest
pixel (radius r from the centroid): a circle fills it (1), a square 2/π ≈ 0.64, an equilateral triangle 3√3/(4π) ≈
0.41; the thresholds sit between.

Design shape (also star, cross, ring): a hole (pixels inside the blob that are not its colour) makes a ring; else the
blob's n-fold symmetry |C_n| = |Σ r² e^{inθ}| / Σ r² over its pixels (r, θ around the centroid; 1 when all the mass
lies on n rays 1/n turn apart, 0 for a disc) names its corners: 3 a triangle, 5 a five-pointed star, 4 a square or,
when strong (the mass in four arms), a cross; none a circle. At 32 px it keeps square and cross apart where area
ratios (solidity, fill) overlap. Measured on 300 images of each design at 32 and 64 px in tests/test_shape_reader.py.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from seg4diff.data.shapes_vocabulary import DESIGNS, SHAPE_CLASSES, SHAPE_PALETTE
from seg4diff.organism.colours import caption_colour_agreement

FILL_THRESHOLDS = (0.52, 0.80)  # colour_shape: below, triangle; between, square; above, circle
# Thresholds between the values measured on 1,000 shape-design images at 32 px (at 64 px they are further apart).
HOLE_SHARE = 0.1  # share of the filled blob that is hole: a ring's ≥ 0.21, the other shapes' 0
ROUND_SYMMETRY = 0.12  # below it for n = 3, 4 and 5, a circle: circles ≤ 0.09, squares' 4-fold ≥ 0.14
CROSS_SYMMETRY = 0.42  # a 4-fold symmetry above it, a cross: crosses ≥ 0.44, squares ≤ 0.40


def _fill(mask: np.ndarray) -> float:
    """Returns the mask's area over that of the disc through its farthest pixel from the centroid."""
    ys, xs = np.nonzero(mask)
    radius = np.sqrt((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2).max() + 0.5  # pixel centres → the shape's edge
    return len(ys) / (np.pi * radius**2)


def _symmetry(mask: np.ndarray, fold: int) -> float:
    """Returns |C_fold| of the mask's pixels around their centroid: 1 when all lie on `fold` rays 1/fold turn apart."""
    ys, xs = np.nonzero(mask)
    dy, dx = ys - ys.mean(), xs - xs.mean()
    weight = dy**2 + dx**2
    if weight.sum() == 0:
        return 0.0
    return float(np.abs((weight * np.exp(1j * fold * np.arctan2(dy, dx))).sum()) / weight.sum())


def blob_shape(mask: np.ndarray, design: str = "colour_shape") -> str:
    """Returns the shape word of `design` (colour_shape: circle, square, triangle; shape: also star, cross, ring) that
    one connected boolean mask shows."""
    if design == "colour_shape":
        fill = _fill(mask)
        return "triangle" if fill < FILL_THRESHOLDS[0] else "square" if fill < FILL_THRESHOLDS[1] else "circle"
    filled = ndimage.binary_fill_holes(mask)
    if 1 - mask.sum() / filled.sum() > HOLE_SHARE:
        return "ring"
    folds = {fold: _symmetry(filled, fold) for fold in (3, 4, 5)}
    fold = max(folds, key=folds.get)
    if folds[fold] < ROUND_SYMMETRY:
        return "circle"
    if fold == 4:
        return "cross" if folds[4] > CROSS_SYMMETRY else "square"
    return "triangle" if fold == 3 else "star"


def blobs(
    image: np.ndarray, saturation: float = 0.25, min_area: int = 6, design: str = "colour_shape"
) -> list[tuple[str, str, np.ndarray]]:
    """Returns (colour, shape, mask) of every saturated blob of at least `min_area` pixels in an RGB image, largest
    first; a blob's colour is the design's palette colour most of its pixels are nearest to."""
    image = np.asarray(image, dtype=float)
    if image.max() > 1.5:
        image = image / 255
    colours = DESIGNS[design].colours
    saturated = (image.max(-1) - image.min(-1)) > saturation
    palette = np.array(list(colours.values()), dtype=float) / 255
    nearest = np.argmin(((image[..., None, :] - palette) ** 2).sum(-1), axis=-1)
    found = []
    for colour_index, colour in enumerate(colours):  # blobs per colour: touching objects of two colours stay apart
        labels, count = ndimage.label(saturated & (nearest == colour_index))
        for blob in range(1, count + 1):
            mask = labels == blob
            if mask.sum() >= min_area:
                found.append((colour, blob_shape(mask, design), mask))
    return sorted(found, key=lambda item: -int(item[2].sum()))


def objects(
    image: np.ndarray, saturation: float = 0.25, min_area: int = 6, design: str = "colour_shape"
) -> list[tuple[str, str, int]]:
    """Returns (colour, shape, area) of every saturated blob of at least `min_area` pixels in an RGB image in [0, 1]
    (or 0–255), largest first; a blob's colour is the design's palette colour most of its pixels are nearest to."""
    return [(colour, shape, int(mask.sum())) for colour, shape, mask in blobs(image, saturation, min_area, design)]


def caption_objects(caption: str) -> set[tuple[str, str]]:
    """Returns the (colour, shape) pairs a Shapes caption of either design names ("red circle and background and blue
    square")."""
    words = caption.split()
    return {(a, b) for a, b in zip(words, words[1:]) if a in SHAPE_PALETTE and b in SHAPE_CLASSES}


def object_recall(image: np.ndarray, caption: str, design: str = "colour_shape") -> float:
    """Returns the share of the caption's objects (colour and shape) found among the image's blobs (NaN: none named)."""
    named = caption_objects(caption)
    if not named:
        return float("nan")
    seen = {(colour, shape) for colour, shape, _ in objects(image, design=design)}
    return len(named & seen) / len(named)


def shape_recall(image: np.ndarray, caption: str, design: str = "colour_shape") -> float:
    """Returns the share of the caption's shapes found among the image's blobs in any colour (NaN: none named)."""
    named = {shape for _, shape in caption_objects(caption)}
    if not named:
        return float("nan")
    return len(named & {shape for _, shape, _ in objects(image, design=design)}) / len(named)


def colour_recall(image: np.ndarray, caption: str, design: str = "colour_shape") -> float:
    """Returns the share of the caption's colours found among the image's blobs in any shape (NaN: none named)."""
    named = {colour for colour, _ in caption_objects(caption)}
    if not named:
        return float("nan")
    return len(named & {colour for colour, _, _ in objects(image, design=design)}) / len(named)


def prompt_reading(images: np.ndarray, captions: list[str], design: str = "colour_shape") -> dict[str, float]:
    """Returns what generated images keep of their captions: the mean shape, colour and object recall, each beside its
    chance level (the same images read against the next caption's objects: a model that ignores the caption scores it),
    and caption colour agreement (the largest blob's colour named)."""
    reading = {}
    rolled = captions[1:] + captions[:1]
    for name, recall in (("shape", shape_recall), ("colour", colour_recall), ("object", object_recall)):
        reading[f"{name}_recall"] = float(np.nanmean([recall(i, c, design) for i, c in zip(images, captions)]))
        reading[f"{name}_recall_chance"] = float(np.nanmean([recall(i, c, design) for i, c in zip(images, rolled)]))
    reading["caption_colour_agreement"], reading["caption_colour_chance"] = caption_colour_agreement(
        images, captions, design
    )
    return reading
