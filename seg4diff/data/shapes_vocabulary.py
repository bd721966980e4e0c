"""The Shapes dataset's vocabulary: its palette, its shapes and the class names they make (read by the dataset
generator and by the organism's colour and shape readers)."""

from __future__ import annotations

COLOURS = {"red": (215, 45, 40), "green": (40, 175, 65), "blue": (45, 80, 225), "yellow": (235, 205, 35)}
SHAPES = ("circle", "square", "triangle")
CLASS_NAMES = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]
