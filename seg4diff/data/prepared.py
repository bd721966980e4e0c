"""The prepared store: one zarr (format 3) per split, written through xarray. The schema lives here only.

Variables: image (sample, y, x, channel) uint8 at the working resolution; label (sample, label_y, label_x) uint8
at the label resolution (255 = ignore); present (sample, class) bool; caption and source_id (sample) strings;
class_name (class). A store is written to `<name>.tmp` and renamed when complete, so an interrupted run
never leaves a store that looks finished.
"""
from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from PIL import Image

from seg4diff.data.sample import IGNORE_INDEX, RawSample
from seg4diff.errors import DataError

SCHEMA_VERSION = 1
BATCH = 64


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Returns the RGB image resized to size×size (bicubic when shrinking keeps edges honest; aspect not kept)."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def resize_label(label: np.ndarray, size: int) -> np.ndarray:
    """Returns the label map resized to size×size by nearest neighbour (ids are never blended)."""
    if label.shape == (size, size):
        return label
    return np.asarray(Image.fromarray(label).resize((size, size), Image.Resampling.NEAREST))


@dataclass
class PreparedBatch:
    samples: list[RawSample]
    resolution: int
    label_resolution: int
    num_classes: int

    def to_dataset(self) -> xr.Dataset:
        labels = np.stack([resize_label(s.label, self.label_resolution) for s in self.samples])
        present = np.zeros((len(self.samples), self.num_classes), dtype=bool)
        for row, label in enumerate(labels):
            ids = np.unique(label)
            present[row, ids[ids != IGNORE_INDEX]] = True
        return xr.Dataset(
            {
                "image": (("sample", "y", "x", "channel"), np.stack([resize_image(s.image, self.resolution) for s in self.samples])),
                "label": (("sample", "label_y", "label_x"), labels),
                "present": (("sample", "class"), present),
                "caption": ("sample", np.array([s.caption for s in self.samples], dtype=object)),
                "source_id": ("sample", np.array([s.source_id for s in self.samples], dtype=object)),
            }
        )


class PreparedWriter:
    """Streams batches of samples into `<path>.tmp`; `commit()` renames it to `path`."""

    def __init__(self, path: Path, class_names: list[str], has_background: bool, resolution: int, label_resolution: int, attrs: dict):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.class_names = class_names
        self.resolution = resolution
        self.label_resolution = label_resolution
        self.attrs = {"schema_version": SCHEMA_VERSION, "ignore_index": IGNORE_INDEX, "has_background": has_background,
                      "resolution": resolution, "label_resolution": label_resolution, **attrs}
        self.count = 0

    def write(self, samples: list[RawSample]) -> None:
        if not samples:
            return
        batch = PreparedBatch(samples, self.resolution, self.label_resolution, len(self.class_names)).to_dataset()
        batch = batch.assign_coords(sample=np.arange(self.count, self.count + len(samples)))
        encoding = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # zarr's note that string dtypes are not yet in the v3 spec
            if self.count == 0:
                batch = batch.assign(class_name=("class", np.array(self.class_names, dtype=object)))
                encoding = {"image": {"chunks": (BATCH, self.resolution, self.resolution, 3)},
                            "label": {"chunks": (BATCH, self.label_resolution, self.label_resolution)}}
                batch.to_zarr(self.tmp, mode="w", zarr_format=3, consolidated=False, encoding=encoding)
            else:
                batch.to_zarr(self.tmp, append_dim="sample", zarr_format=3, consolidated=False)
        self.count += len(samples)

    def commit(self, attrs: dict) -> None:
        """Records final attrs (counts, skipped) and moves the finished store into place."""
        import zarr

        if self.count == 0:
            raise ValueError(f"no usable sample for {self.path}: every sample was skipped (see the prepare summary)")
        group = zarr.open_group(self.tmp, mode="r+", zarr_format=3)
        group.attrs.update({**self.attrs, **attrs})  # xarray's appends reset group attrs
        shutil.rmtree(self.path, ignore_errors=True)
        self.tmp.rename(self.path)


def open_prepared(path: Path) -> xr.Dataset:
    """Returns the lazily loaded prepared store at `path`, checking it is complete and of this schema."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prepared store {path} does not exist: run the prepare stage (dvc repro prepare)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dataset = xr.open_zarr(path, consolidated=False, zarr_format=3)
    if dataset.attrs.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path} has schema version {dataset.attrs.get('schema_version')}, expected {SCHEMA_VERSION}: re-run prepare")
    return dataset


def class_names(dataset: xr.Dataset) -> list[str]:
    """Returns the class names of a prepared store in id order."""
    return [str(name) for name in dataset["class_name"].values]


def require_captions(dataset: xr.Dataset, split: str, needed_by: str) -> None:
    """Raises DataError, in one line, when a prepared split has no caption at all but `needed_by` (a setting) reads them."""
    if not any(str(caption).strip() for caption in dataset["caption"].values):
        raise DataError(f"split '{split}' has no captions but {needed_by} needs them: give the source a captions file "
                        f"(data.coco.splits.{split}.captions or data.mask_folder.splits.{split}.captions) or change {needed_by}")
