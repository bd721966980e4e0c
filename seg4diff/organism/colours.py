"""Colour readers of the organism's images: the palette colour of the largest blob, and whether a caption names it.
`design` (a Shapes design, `data.shapes.design`) picks the palette: colour_shape's four colours or shape's six."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from seg4diff.data.shapes_vocabulary import DESIGNS


def largest_blob_colour(image: np.ndarray, saturation: float = 0.25, design: str = "colour_shape") -> str | None:
    """Returns the palette colour dominating the largest saturated connected region of an RGB image in [0, 1]."""
    saturated = (image.max(-1) - image.min(-1)) > saturation
    labels, count = ndimage.label(saturated)
    if count == 0:
        return None
    largest = labels == (1 + int(np.argmax(ndimage.sum(saturated, labels, range(1, count + 1)))))
    colours = DESIGNS[design].colours
    palette = np.array(list(colours.values()), dtype=float) / 255
    nearest = np.argmin(((image[largest][:, None, :] - palette[None]) ** 2).sum(-1), axis=1)
    return list(colours)[int(np.bincount(nearest, minlength=len(palette)).argmax())]


def colour_hits(images: np.ndarray, captions: list[str], design: str = "colour_shape") -> np.ndarray:
    """Per image: 1.0 when its largest blob has a colour named in its caption, else 0.0."""
    return np.array(
        [
            float(largest_blob_colour(image, design=design) in _colours_of(caption, design))
            for image, caption in zip(images, captions)
        ]
    )


def caption_colour_agreement(
    images: np.ndarray, captions: list[str], design: str = "colour_shape"
) -> tuple[float, float]:
    """Returns (share of images whose largest blob has a colour named in the caption, the chance rate of that)."""
    palette_size = len(DESIGNS[design].colours)
    chance = [len(_colours_of(caption, design)) / palette_size for caption in captions]
    return float(colour_hits(images, captions, design).mean()), float(np.mean(chance))


def _colours_of(caption: str, design: str) -> set[str]:
    return {word for word in caption.split() if word in DESIGNS[design].colours}
