"""What every dataset source yields: a sample, or a SampleError that names why it cannot be used."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from seg4diff.errors import DataError

IGNORE_INDEX = 255


class SampleError(DataError):
    """A sample that cannot be used; `reason` is a short stable name counted in the prepare summary (a DataError:
    with prepare.on_error 'fail' it stops the run in one line, never retried)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class RawSample:
    source_id: str
    image: np.ndarray  # (height, width, 3) uint8 RGB
    label: np.ndarray  # (height, width) uint8 class ids, IGNORE_INDEX where unlabelled
    caption: str = ""
    notes: tuple[str, ...] = ()  # anomalies handled without skipping (e.g. "empty_mask"), counted in the summary


class DatasetSource(Protocol):
    """A dataset split by split: contiguous class names (background first when the dataset has it)."""

    class_names: list[str]
    has_background: bool

    def sample_ids(self, split: str) -> list[str]: ...

    def label_shape(self, split: str, sample_id: str) -> tuple[int, int] | None:
        """Returns the sample's native label (height, width) without decoding it; None when it cannot be read."""
        ...

    def load(self, split: str, sample_id: str) -> RawSample:
        """Returns the sample or raises SampleError."""
        ...
