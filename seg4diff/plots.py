"""Figures logged to MLflow: curves, heatmaps and image grids (matplotlib, headless)."""
from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def loss_curve(steps: list[int], losses: list[float], title: str = "training loss") -> plt.Figure:
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(steps, losses)
    axis.set(xlabel="step", ylabel="loss", title=title, yscale="log")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def image_grid(images: np.ndarray, titles: list[str], columns: int = 8) -> plt.Figure:
    """Returns a grid of RGB images (n, H, W, 3) in [0, 1] with wrapped titles."""
    rows = int(np.ceil(len(images) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, image, title in zip(axes.ravel(), images, titles):
        axis.imshow(image, interpolation="nearest")
        axis.set_title("\n".join(textwrap.wrap(title, 18)), fontsize=6)
    figure.tight_layout()
    return figure
