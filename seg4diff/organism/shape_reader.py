"""A simple, rotation-invariant reader of Shapes images: each saturated blob's colour and shape, and how many of a
caption's objects an image shows. Used to measure what generated images keep of their prompt.

Shape from the blob's area relative to the disc through its farthest pixel (radius r from the centroid): a circle
fills it (1), a square 2/π ≈ 0.64, an equilateral triangle 3√3/(4π) ≈ 0.41; the thresholds sit between.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from seg4diff.data.shapes_vocabulary import COLOURS, SHAPES

FILL_THRESHOLDS = (0.52, 0.80)  # below: triangle; between: square; above: circle


def blob_shape(mask: np.ndarray) -> str:
    """Returns 'circle', 'square' or 'triangle' for one connected boolean mask."""
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    radius = np.sqrt((ys - cy) ** 2 + (xs - cx) ** 2).max() + 0.5  # pixel centres → the shape's edge
    fill = len(ys) / (np.pi * radius**2)
    return "triangle" if fill < FILL_THRESHOLDS[0] else "square" if fill < FILL_THRESHOLDS[1] else "circle"


def objects(image: np.ndarray, saturation: float = 0.25, min_area: int = 6) -> list[tuple[str, str, int]]:
    """Returns (colour, shape, area) of every saturated blob of at least `min_area` pixels in an RGB image in [0, 1],
    largest first; a blob's colour is the palette colour most of its pixels are nearest to."""
    image = np.asarray(image, dtype=float)
    if image.max() > 1.5:
        image = image / 255
    saturated = (image.max(-1) - image.min(-1)) > saturation
    palette = np.array(list(COLOURS.values()), dtype=float) / 255
    nearest = np.argmin(((image[..., None, :] - palette) ** 2).sum(-1), axis=-1)
    found = []
    for colour_index, colour in enumerate(COLOURS):  # blobs per colour: touching objects of two colours stay apart
        labels, count = ndimage.label(saturated & (nearest == colour_index))
        for blob in range(1, count + 1):
            mask = labels == blob
            area = int(mask.sum())
            if area >= min_area:
                found.append((colour, blob_shape(mask), area))
    return sorted(found, key=lambda item: -item[2])


def caption_objects(caption: str) -> set[tuple[str, str]]:
    """Returns the (colour, shape) pairs a Shapes caption names ("red circle and background and blue square")."""
    words = caption.split()
    return {(a, b) for a, b in zip(words, words[1:]) if a in COLOURS and b in SHAPES}


def object_recall(image: np.ndarray, caption: str) -> float:
    """Returns the share of the caption's objects (colour and shape) found among the image's blobs (NaN: none named)."""
    named = caption_objects(caption)
    if not named:
        return float("nan")
    seen = {(colour, shape) for colour, shape, _ in objects(image)}
    return len(named & seen) / len(named)
