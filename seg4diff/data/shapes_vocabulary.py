"""The Shapes dataset's vocabulary, one per design: its palette, its shapes and the class names they make (read by the
dataset generator and by the organism's colour and shape readers)."""

from __future__ import annotations

from dataclasses import dataclass

# Design colour_shape: a class is a colour and a shape ("red circle"), so the colour word alone often names it.
COLOURS = {"red": (215, 45, 40), "green": (40, 175, 65), "blue": (45, 80, 225), "yellow": (235, 205, 35)}
SHAPES = ("circle", "square", "triangle")
CLASS_NAMES = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]

# Design shape: a class is a shape, its colour drawn independently of it, so only the shape tells objects apart.
# Two more colours, saturated and far (in RGB) from the four and from each other, so the colour reader keeps them apart.
SHAPE_PALETTE = {**COLOURS, "purple": (160, 55, 205), "cyan": (35, 190, 205)}
SHAPE_CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")


@dataclass(frozen=True)
class Vocabulary:
    """A design's palette (colour word → RGB), its shape words and its class names (background not included)."""

    colours: dict[str, tuple[int, int, int]]
    shapes: tuple[str, ...]
    class_names: tuple[str, ...]


DESIGNS = {
    "colour_shape": Vocabulary(COLOURS, SHAPES, tuple(CLASS_NAMES)),
    "shape": Vocabulary(SHAPE_PALETTE, SHAPE_CLASSES, SHAPE_CLASSES),
}
