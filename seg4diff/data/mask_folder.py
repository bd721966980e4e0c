"""Semantic-mask folders (VOC, ADE20K, Pascal-Context, Cityscapes layouts): images + single-channel PNG labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from seg4diff.config import MaskFolderParams
from seg4diff.data.images import read_label, read_rgb, resolve_inside
from seg4diff.data.sample import IGNORE_INDEX, RawSample, SampleError


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """Returns the label with 0 → ignore and every other id shifted down by one (mmsegmentation's convention)."""
    reduced = label.astype(np.int16) - 1
    reduced[label == 0] = IGNORE_INDEX
    reduced[label == IGNORE_INDEX] = IGNORE_INDEX
    return reduced.astype(np.uint8)


def _lookup(mapping: dict[int, int] | None) -> np.ndarray | None:
    """A 256-entry table: listed ids → class ids, every other id → ignore."""
    if mapping is None:
        return None
    table = np.full(256, IGNORE_INDEX, np.uint8)
    for source_id, class_id in mapping.items():
        table[source_id] = class_id
    return table


class MaskFolderSource:
    """Per split an image folder and a label folder, sample `id` ↔ `<id><image_suffix>` and `<id><label_suffix>`.

    Ids come from an ids file or from walking the image folder (sub-folders too: Cityscapes keeps one per city, and
    the id is then `city/name`). A fallback label file with its own id map covers labels shipped in another id space.
    """

    def __init__(self, root: Path, splits: dict[str, tuple[str, str, str | None]], params: MaskFolderParams):
        self.root = Path(root)
        self._splits = splits
        self.class_names = list(params.class_names)
        self.has_background = bool(self.class_names) and self.class_names[0] == "background"
        self.params = params
        self._caption_cache: dict[str, dict[str, str]] = {}
        self._lut, self._fallback_lut = _lookup(params.label_map), _lookup(params.fallback_label_map)

    def _split(self, split: str) -> tuple[Path, Path, str | None]:
        if split not in self._splits:
            raise KeyError(f"split '{split}' is not configured; known splits: {sorted(self._splits)}")
        images, labels, ids_file = self._splits[split][:3]
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
        suffix = self.params.image_suffix
        return sorted(path.relative_to(images).as_posix()[: -len(suffix)] for path in images.rglob(f"*{suffix}"))

    def _label_path(self, labels: Path, sample_id: str) -> tuple[Path, bool]:
        """The label file and whether it is the fallback (another id space), used only when the primary is missing."""
        fallback = self.params.fallback_label_suffix
        primary = labels / (sample_id + self.params.label_suffix)
        if fallback is None or primary.is_file() or not (labels / (sample_id + fallback)).is_file():
            return resolve_inside(labels, sample_id + self.params.label_suffix), False
        return resolve_inside(labels, sample_id + fallback), True

    def label_shape(self, split: str, sample_id: str) -> tuple[int, int] | None:
        try:
            with Image.open(self._label_path(self._split(split)[1], sample_id)[0]) as image:
                return image.size[::-1]
        except (OSError, SampleError):
            return None

    def _label(self, labels: Path, sample_id: str) -> np.ndarray:
        """Reads the label file, or the fallback one (mapped to class ids) when only that exists."""
        path, is_fallback = self._label_path(labels, sample_id)
        label = read_label(path)
        if is_fallback:
            return label if self._fallback_lut is None else self._fallback_lut[label]
        label = reduce_zero_label(label) if self.params.reduce_zero_label else label
        return label if self._lut is None else self._lut[label]

    def load(self, split: str, sample_id: str) -> RawSample:
        images, labels, _ = self._split(split)
        image = read_rgb(resolve_inside(images, sample_id + self.params.image_suffix))
        label = self._label(labels, sample_id)
        if label.shape != image.shape[:2]:
            raise SampleError(
                "size_mismatch", f"label of {sample_id} is {label.shape[::-1]}, image is {image.shape[1::-1]}"
            )
        unknown = np.setdiff1d(np.unique(label), [*range(len(self.class_names)), IGNORE_INDEX])
        if unknown.size:
            raise SampleError(
                "unknown_class_id",
                f"label of {sample_id} holds ids {unknown.tolist()}; only 0..{len(self.class_names) - 1} and "
                f"{IGNORE_INDEX} are known",
            )
        return RawSample(
            source_id=f"{split}/{sample_id}", image=image, label=label, caption=self._captions(split).get(sample_id, "")
        )

    def _captions(self, split: str) -> dict[str, str]:
        """The split's captions file (JSON: sample id → caption), read once; empty when none is configured or the
        configured file is not there (captions are optional: the stages that need them refuse at start)."""
        if split not in self._caption_cache:
            path = self._splits[split][3] if len(self._splits[split]) > 3 else None
            if path is None or not (self.root / path).is_file():
                self._caption_cache[split] = {}
            else:
                self._caption_cache[split] = {
                    str(k): str(v) for k, v in json.loads((self.root / path).read_text()).items()
                }
        return self._caption_cache[split]
