"""Selection and report parts of a split: choices are made on one, numbers reported from the other.

A benchmark that ships only its validation images (VOC, COCO val2017, ADE20K val, …) still needs images to choose on
(the expert block and σ, background thresholds, the predictor) that are not the images it reports. `prepare.partition`
divides such a split by a hash of each image id — deterministic, independent of order, of `max_samples` and of the
machine — into `<split>-select` (the given share) and `<split>-report` (the rest), prepared instead of `<split>`.
"""

from __future__ import annotations

import hashlib

SELECT, REPORT = "select", "report"
PARTS = (SELECT, REPORT)


def part_of(sample_id: str, select_share: float) -> str:
    """Returns 'select' or 'report': 'select' when the first 8 bytes of SHA-256(sample id), read as a fraction of
    2⁶⁴, fall below `select_share`."""
    fraction = int.from_bytes(hashlib.sha256(str(sample_id).encode()).digest()[:8], "big") / 2**64
    return SELECT if fraction < select_share else REPORT


def part_name(split: str, part: str) -> str:
    """Returns the prepared name of a split's part: 'val-select', 'val-report'."""
    return f"{split}-{part}"


def prepared_names(splits: list[str], partition: dict[str, float]) -> list[str]:
    """Returns the names of the prepared stores: each split, or its two parts where it is partitioned."""
    return [
        name for split in splits for name in ([part_name(split, p) for p in PARTS] if split in partition else [split])
    ]


def source_split(name: str, partition: dict[str, float]) -> tuple[str, str | None]:
    """Returns (source split, part or None) of a prepared store's name."""
    for part in PARTS:
        split = name.removesuffix(f"-{part}")
        if split != name and split in partition:
            return split, part
    return name, None
