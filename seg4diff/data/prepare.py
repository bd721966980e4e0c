"""Dataset preparation: any source → one prepared store per split, with a summary of what was kept and why not."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from seg4diff.config import DataParams, PrepareParams
from seg4diff.data.coco import CocoSource
from seg4diff.data.mask_folder import MaskFolderSource
from seg4diff.data.partition import part_of, source_split
from seg4diff.data.prepared import BATCH, PreparedWriter, publish, resize_label, settings_digest
from seg4diff.data.sample import IGNORE_INDEX, DatasetSource, SampleError
from seg4diff.errors import DataError
from seg4diff.ownership import check_replaceable


def build_source(data: DataParams, splits: list[str]) -> DatasetSource:
    """Returns the configured dataset source (Shapes must have been generated under data.root: `generate_shapes`)."""
    root = Path(data.root)
    if data.source == "shapes":
        return CocoSource(root, {s: (f"annotations/{s}.json", f"images/{s}") for s in splits}, background=True)
    if data.source == "coco":
        return CocoSource(
            root,
            {s: (c.annotations, c.images) for s, c in data.coco.splits.items()},
            data.coco.background,
            {s: c.captions for s, c in data.coco.splits.items()},
        )
    folder = data.mask_folder
    return MaskFolderSource(
        root, {s: (c.images, c.labels, c.ids_file, c.captions) for s, c in folder.splits.items()}, folder
    )


@dataclass
class SplitSummary:
    split: str
    total: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_examples: dict[str, str] = field(default_factory=dict)
    notes: Counter = field(default_factory=Counter)
    captions: int = 0  # kept samples with a caption
    class_pixels: np.ndarray | None = None
    class_images: np.ndarray | None = None

    def as_dict(self, class_names: list[str]) -> dict:
        pixels = self.class_pixels / max(self.class_pixels.sum(), 1)
        return {
            "split": self.split,
            "total": self.total,
            "kept": self.kept,
            "skipped": dict(self.skipped),
            "skipped_examples": self.skipped_examples,
            "notes": dict(self.notes),
            "captions": self.captions,
            "class_pixel_share": {n: round(float(p), 5) for n, p in zip(class_names, pixels)},
            "class_images": {n: int(c) for n, c in zip(class_names, self.class_images)},
        }


def largest_label(source: DatasetSource, split: str, ids: list[str]) -> tuple[int, int]:
    """Returns the (height, width) that holds every sample's native label, from headers (no image is decoded)."""
    shapes = [shape for shape in (source.label_shape(split, i) for i in ids) if shape is not None]
    if not shapes:
        return (1, 1)
    return max(h for h, _ in shapes), max(w for _, w in shapes)


def prepare_split(
    source: DatasetSource,
    split: str,
    output: Path,
    params: PrepareParams,
    progress: bool = True,
    settings: dict | None = None,
    publish_now: bool = True,
) -> SplitSummary:
    """Writes `output` (a prepared zarr store) for one prepared split and returns what was kept, skipped and noted.

    `split` is a prepared name: a source split, or its part (`val-select`, `val-report`) where `params.partition`
    divides it (seg4diff.data.partition: by a hash of each image id, before `max_samples` caps it).

    `settings`: the preparation_settings recorded in the store (`made_with`, and their hash as `settings`). With
    `publish_now` false the finished store stays at `<output>.tmp` until `publish(output)`, so that several splits are
    published together."""
    check_replaceable(output, "prepare.output")  # before any work: a folder seg4diff did not write is never replaced
    source_name, part = source_split(split, params.partition)
    ids = source.sample_ids(source_name)
    if part is not None:
        ids = [i for i in ids if part_of(i, params.partition[source_name]) == part]
        if not ids:
            raise DataError(
                f"prepare.partition: no image of split '{source_name}' falls in its {part} part (share "
                f"{params.partition[source_name]}): raise the share or prepare more images"
            )
    ids = ids[: params.cap(split)]
    num_classes = len(source.class_names)
    summary = SplitSummary(
        split,
        total=len(ids),
        class_pixels=np.zeros(num_classes, np.int64),
        class_images=np.zeros(num_classes, np.int64),
    )
    writer = PreparedWriter(
        output,
        source.class_names,
        source.has_background,
        params.size,
        params.label_resolution,
        largest_label(source, source_name, ids) if params.label_resolution == "native" else (0, 0),
        attrs={
            "split": split,
            "source_split": source_name,
            "part": part or "",
            "made_with": settings,
            "settings": settings and settings_digest(settings),
        },
    )
    batch = []
    for sample_id in tqdm(ids, desc=f"prepare {split}", unit="img", disable=not progress):
        try:
            sample = source.load(source_name, sample_id)
            writer.check(sample)
        except SampleError as error:
            if params.on_error == "fail":
                raise SampleError(
                    error.reason,
                    f"split '{source_name}', sample '{sample_id}': {error.detail} "
                    "(set prepare.on_error: skip to skip it)",
                ) from None
            summary.skipped[error.reason] += 1
            summary.skipped_examples.setdefault(error.reason, f"{sample_id}: {error.detail}")
            continue
        summary.notes.update(sample.notes)
        summary.captions += bool(sample.caption.strip())
        label = resize_label(sample.label, params.label_resolution)
        counts = np.bincount(label[label != IGNORE_INDEX].ravel(), minlength=num_classes)
        summary.class_pixels += counts
        summary.class_images += counts > 0
        batch.append(sample)
        if len(batch) == BATCH:
            writer.write(batch)
            batch = []
    writer.write(batch)
    summary.kept = writer.count
    writer.finish({"total": summary.total, "kept": summary.kept, "skipped": dict(summary.skipped)})
    if publish_now:
        publish(output)
    return summary


def skip_line(summary: SplitSummary) -> str:
    """Returns one line saying how many samples of a split were kept and, if any were skipped, why (with an example)."""
    line = f"prepare {summary.split}: kept {summary.kept} of {summary.total} samples"
    if summary.kept and not summary.captions:
        line += " (no captions: the stages that generate from them will refuse)"
    if not summary.skipped:
        return line
    reasons = ", ".join(f"{reason}: {count}" for reason, count in summary.skipped.most_common())
    example = next(iter(summary.skipped_examples.values()), "")
    return f"{line}; SKIPPED {sum(summary.skipped.values())} ({reasons}), e.g. {example}"


def summary_markdown(summaries: list[SplitSummary], class_names: list[str]) -> str:
    """Returns a markdown report: per split counts and skip reasons, then per-class image counts and pixel shares."""
    lines = ["| split | total | kept | skipped (reason: count) | handled (note: count) |", "|---|---:|---:|---|---|"]
    for s in summaries:
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(s.skipped.items())) or "—"
        notes = ", ".join(f"{k}: {v}" for k, v in sorted(s.notes.items())) or "—"
        lines.append(f"| {s.split} | {s.total} | {s.kept} | {skipped} | {notes} |")
    lines += [
        "",
        "| class | " + " | ".join(f"{s.split} images | {s.split} pixel %" for s in summaries) + " |",
        "|---|" + "---:|---:|" * len(summaries),
    ]
    for k, name in enumerate(class_names):
        cells = []
        for s in summaries:
            share = 100 * s.class_pixels[k] / max(s.class_pixels.sum(), 1)
            cells.append(f"{s.class_images[k]} | {share:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
