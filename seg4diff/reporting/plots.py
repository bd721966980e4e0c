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


def layer_curve(scores, title: str = "zero-shot mIoU per layer") -> plt.Figure:
    """Returns mIoU (head mean) per layer at each direction's best σ, with 95% bootstrap intervals."""
    figure, axis = plt.subplots(figsize=(6, 3.5))
    rows = scores[(scores.metric == "miou") & (scores["head"] == "mean")]
    for direction, group in rows.groupby("direction"):
        best_sigma = group.groupby("sigma").value.mean().idxmax()
        curve = group[group.sigma == best_sigma].sort_values("layer")
        axis.plot(curve.layer, curve.value, marker="o", label=f"{direction} (σ={best_sigma:g})")
        axis.fill_between(curve.layer, curve.ci_low, curve.ci_high, alpha=0.2)
    axis.set(xlabel="layer", ylabel="mIoU", title=title)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def heatmap(values: np.ndarray, rows: list, columns: list, title: str, row_label: str, column_label: str) -> plt.Figure:
    """Returns an annotated heatmap of values (rows × columns)."""
    figure, axis = plt.subplots(figsize=(1 + 0.6 * len(columns), 1 + 0.45 * len(rows)))
    image = axis.imshow(values, cmap="viridis", aspect="auto")
    axis.set_xticks(range(len(columns)), [f"{c:g}" if isinstance(c, float) else str(c) for c in columns], fontsize=7)
    axis.set_yticks(range(len(rows)), [str(r) for r in rows], fontsize=7)
    for (i, j), value in np.ndenumerate(values):
        axis.text(
            j,
            i,
            f"{value:.2f}",
            ha="center",
            va="center",
            fontsize=6,
            color="white" if value < np.nanmean(values) else "black",
        )
    axis.set(title=title, xlabel=column_label, ylabel=row_label)
    figure.colorbar(image, ax=axis, fraction=0.04)
    figure.tight_layout()
    return figure


def palette(num_classes: int) -> np.ndarray:
    """Returns a fixed colour per class id (0 dark grey), plus white for ignore (index 255)."""
    colours = plt.get_cmap("tab20")(np.arange(num_classes) % 20)[:, :3]
    colours[0] = 0.2
    table = np.ones((256, 3))
    table[:num_classes] = colours
    return table


def overlay(image: np.ndarray, label: np.ndarray, num_classes: int, alpha: float = 0.55) -> np.ndarray:
    """Returns the RGB image (uint8 or [0, 1]) blended with the colour-coded label map, at the label's resolution."""
    from PIL import Image

    rgb = (
        np.asarray(
            Image.fromarray(np.asarray(image, dtype=np.uint8)).resize(label.shape[::-1], Image.Resampling.BILINEAR)
        )
        / 255
    )
    return (1 - alpha) * rgb + alpha * palette(num_classes)[label]


def attention_examples(images, labels, predictions, maps, map_titles, num_classes: int, title: str) -> plt.Figure:
    """Returns one row per sample: image | ground truth | prediction | each prompted class's attention map."""
    columns = 3 + max(len(m) for m in maps)
    figure, axes = plt.subplots(len(images), columns, figsize=(1.7 * columns, 1.8 * len(images)), squeeze=False)
    for row, (image, label, prediction, sample_maps, names) in enumerate(
        zip(images, labels, predictions, maps, map_titles)
    ):
        panels = [
            (image, "image"),
            (overlay(image, label, num_classes), "ground truth"),
            (overlay(image, prediction, num_classes), "prediction"),
        ] + list(zip(sample_maps, names))
        for axis in axes[row]:
            axis.axis("off")
        for axis, (panel, name) in zip(axes[row], panels):
            axis.imshow(panel, cmap="magma", interpolation="nearest")
            axis.set_title(name, fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def causal_figure(table, grounding, expert_layer: int) -> plt.Figure:
    """Returns, per layer: the grounding mIoU (left), then for each perturbation the paired change of each image metric
    and the flow-loss increase with their 95% intervals (the expert layer marked)."""
    metrics = [m for m in table.metric.unique() if m != "perturbation_l1"]
    figure, axes = plt.subplots(1, 1 + len(metrics), figsize=(3.2 * (1 + len(metrics)), 3.2), squeeze=False)
    axes = axes[0]
    axes[0].plot(grounding.layer, grounding.value, marker="o", color="black")
    if "ci_low" in grounding:
        axes[0].fill_between(grounding.layer, grounding.ci_low, grounding.ci_high, alpha=0.2, color="grey")
    axes[0].set(title="grounding mIoU (expert σ)", xlabel="layer")
    for axis, metric in zip(axes[1:], metrics):
        rows = table[table.metric == metric]
        kinds = list(rows.perturbation.unique())
        for k, (kind, group) in enumerate(rows.groupby("perturbation", sort=False)):
            x = group.layer + (k - (len(kinds) - 1) / 2) * 0.18
            axis.errorbar(
                x,
                group.delta,
                yerr=[group.delta - group.ci_low, group.ci_high - group.delta],
                fmt="o",
                ms=4,
                capsize=2,
                label=kind,
            )
        axis.axhline(0, color="grey", lw=0.8)
        axis.set(title=("Δ " if metric != "flow_loss_increase" else "") + metric.replace("_", " "), xlabel="layer")
    for axis in axes:
        axis.axvline(expert_layer, color="red", ls=":", lw=1)
        axis.grid(alpha=0.3)
    axes[-1].legend(fontsize=7)
    figure.suptitle("perturbing one layer's image→text attention during generation (red: expert layer)", fontsize=9)
    figure.tight_layout()
    return figure


def readout_figure(rows: list[dict], split: str) -> plt.Figure:
    """Returns each readout's mIoU with its 95% interval, and its paired difference to `paper` with its interval."""
    names = [row["readout"] for row in rows][::-1]
    figure, axes = plt.subplots(1, 2, figsize=(10, 0.45 * len(rows) + 1.4), sharey=True)
    for axis, (key, title) in zip(axes, (("miou", f"mIoU on {split}"), ("minus_paper", "− paper (paired)"))):
        values = np.array([row[key] for row in rows][::-1])
        low_key, high_key = ("ci_low", "ci_high") if key == "miou" else ("minus_paper_low", "minus_paper_high")
        low = values - np.array([row[low_key] for row in rows][::-1])
        high = np.array([row[high_key] for row in rows][::-1]) - values
        axis.barh(names, values, xerr=[low, high], color="tab:blue" if key == "miou" else "tab:orange", capsize=3)
        axis.set(title=title)
        if key == "minus_paper":
            axis.axvline(0, color="black", linewidth=0.8)
    figure.suptitle(f"readouts, chosen on the selection split, {rows[0]['images']} report images")
    figure.tight_layout()
    return figure
