"""Semantic-mask folders (VOC, ADE20K, Pascal-Context, Cityscapes layouts): images + single-channel PNG labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from seg4diff.data.images import read_label, read_rgb, resolve_inside
from seg4diff.data.sample import IGNORE_INDEX, RawSample, SampleError


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """Returns the label with 0 → ignore and every other id shifted down by one (mmsegmentation's convention)."""
    reduced = label.astype(np.int16) - 1
    reduced[label == 0] = IGNORE_INDEX
    reduced[label == IGNORE_INDEX] = IGNORE_INDEX
    return reduced.astype(np.uint8)


class MaskFolderSource:
    """Per split an image folder and a label folder matched by file stem; ids from an ids file or the image folder."""

    def __init__(self, root: Path, splits: dict[str, tuple[str, str, str | None]], class_names: list[str],
                 reduce_zero_label: bool = False, image_suffix: str = ".jpg", label_suffix: str = ".png"):
        self.root = Path(root)
        self._splits = splits
        self.class_names = list(class_names)
        self.has_background = bool(class_names) and class_names[0] == "background"
        self.reduce_zero_label = reduce_zero_label
        self.image_suffix = image_suffix
        self.label_suffix = label_suffix

    def _split(self, split: str) -> tuple[Path, Path, str | None]:
        if split not in self._splits:
            raise KeyError(f"split '{split}' is not configured; known splits: {sorted(self._splits)}")
        images, labels, ids_file = self._splits[split]
        return self.root / images, self.root / labels, ids_file

    def sample_ids(self, split: str) -> list[str]:
        images, _, ids_file = self._split(split)
        if ids_file is not None:
            path = self.root / ids_file
            if not path.is_file():
                raise FileNotFoundError(f"ids file {path} of split '{split}' does not exist")
            return [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not images.is_dir():
            raise FileNotFoundError(f"image folder {images} of split '{split}' does not exist")
        return sorted(path.stem for path in images.glob(f"*{self.image_suffix}"))

    def load(self, split: str, sample_id: str) -> RawSample:
        images, labels, _ = self._split(split)
        image = read_rgb(resolve_inside(images, sample_id + self.image_suffix))
        label = read_label(resolve_inside(labels, sample_id + self.label_suffix))
        if label.shape != image.shape[:2]:
            raise SampleError("size_mismatch", f"label of {sample_id} is {label.shape[::-1]}, image is {image.shape[1::-1]}")
        if self.reduce_zero_label:
            label = reduce_zero_label(label)
        unknown = np.setdiff1d(np.unique(label), [*range(len(self.class_names)), IGNORE_INDEX])
        if unknown.size:
            raise SampleError("unknown_class_id", f"label of {sample_id} holds ids {unknown.tolist()}; only 0..{len(self.class_names) - 1} and {IGNORE_INDEX} are known")
        return RawSample(source_id=f"{split}/{sample_id}", image=image, label=label)
