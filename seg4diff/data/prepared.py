"""The prepared store: one zarr (format 3) per split, written through xarray. The schema lives here only.

Variables: image (sample, y, x, channel) uint8 at the working resolution; label (sample, label_y, label_x) uint8
(255 = ignore) — at each image's native size when prepare.label_resolution is `native`, padded with 255 to the split's
largest — with label_height/label_width (sample) its valid size; native_height/native_width (sample) the source
image's size; present (sample, class) bool; caption and source_id (sample) strings; class_name (class).

Provenance (attrs): `digest`, a hash of everything a sample holds (source ids, class names, images, labels, captions)
that every store made from this one records and checks; `made_with`, the data and prepare settings that made it
(`preparation_settings`), and `settings`, their hash, checked by every stage that reads it. A store is written to
`<name>.tmp` and published (renamed into place) only when every split of the run is complete, so an interrupted run
never leaves a store that looks finished, nor splits of two different runs side by side.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
from PIL import Image

from seg4diff.config import DataParams, Params, PrepareParams
from seg4diff.data.sample import IGNORE_INDEX, RawSample, SampleError
from seg4diff.errors import DataError
from seg4diff.ownership import STORE_ATTRS, check_replaceable

SCHEMA_VERSION = 3  # 3: provenance attrs (digest, settings)
BATCH = 64
LABEL_CHUNK_BYTES = 1 << 22


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Returns the RGB image resized to (height, width) (bicubic when shrinking keeps edges honest)."""
    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BICUBIC))


def resize_label(label: np.ndarray, size: int | str) -> np.ndarray:
    """Returns the label map at `native` size unchanged, else resized to size×size by nearest neighbour."""
    if size == "native" or label.shape == (size, size):
        return label
    return np.asarray(Image.fromarray(label).resize((size, size), Image.Resampling.NEAREST))


def pad_label(label: np.ndarray, shape: tuple[int, int], fill: int = IGNORE_INDEX) -> np.ndarray:
    """Returns (…, H, W) `label` padded at the bottom and right to `shape` with `fill` (ignored by every metric)."""
    height, width = label.shape[-2:]
    if (height, width) == tuple(shape):
        return label
    if height > shape[0] or width > shape[1]:
        raise ValueError(f"label of {height}x{width} does not fit the store's {shape[0]}x{shape[1]}")
    out = np.full((*label.shape[:-2], *shape), fill, dtype=label.dtype)
    out[..., :height, :width] = label
    return out


def label_sizes(rows: xr.Dataset) -> list[tuple[int, int]]:
    """Returns each sample's valid label (height, width): the size its masks are upsampled to and scored at."""
    return list(zip(rows["label_height"].values.tolist(), rows["label_width"].values.tolist()))


def native_label(rows: xr.Dataset, k: int) -> np.ndarray:
    """Returns sample k's label map without the store's padding."""
    height, width = int(rows["label_height"].values[k]), int(rows["label_width"].values[k])
    return rows["label"].values[k, :height, :width]


class PreparedWriter:
    """Streams batches of samples into `<path>.tmp`; `commit()` renames it to `path`.

    `label_shape`: the padded (label_y, label_x) of the store, known before the first write (the split's largest label).
    """

    def __init__(
        self,
        path: Path,
        class_names: list[str],
        has_background: bool,
        resolution: tuple[int, int],
        label_resolution: int | str,
        label_shape: tuple[int, int],
        attrs: dict,
    ):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.class_names = class_names
        self.resolution = tuple(resolution)
        self.label_resolution = label_resolution
        self.label_shape = (label_resolution, label_resolution) if label_resolution != "native" else tuple(label_shape)
        self.attrs = {
            "schema_version": SCHEMA_VERSION,
            **STORE_ATTRS,
            "ignore_index": IGNORE_INDEX,
            "has_background": has_background,
            "resolution": list(self.resolution),
            "label_resolution": label_resolution,
            **attrs,
        }
        self.count = 0
        self.digest = hashlib.sha256(json.dumps(class_names).encode())

    def check(self, sample: RawSample) -> None:
        """Raises SampleError when the sample's label does not fit the store (its source announced a smaller size)."""
        height, width = sample.label.shape
        if self.label_resolution == "native" and (height > self.label_shape[0] or width > self.label_shape[1]):
            raise SampleError(
                "label_size_changed",
                f"label is {width}x{height}, larger than its source announced "
                f"({self.label_shape[1]}x{self.label_shape[0]} at most)",
            )

    def to_dataset(self, samples: list[RawSample]) -> xr.Dataset:
        labels = [resize_label(s.label, self.label_resolution) for s in samples]
        present = np.zeros((len(samples), len(self.class_names)), dtype=bool)
        for row, label in enumerate(labels):
            ids = np.unique(label)
            present[row, ids[ids != IGNORE_INDEX]] = True
        return xr.Dataset(
            {
                "image": (
                    ("sample", "y", "x", "channel"),
                    np.stack([resize_image(s.image, self.resolution) for s in samples]),
                ),
                "label": (
                    ("sample", "label_y", "label_x"),
                    np.stack([pad_label(label, self.label_shape) for label in labels]),
                ),
                "label_height": ("sample", np.array([label.shape[0] for label in labels], np.int32)),
                "label_width": ("sample", np.array([label.shape[1] for label in labels], np.int32)),
                "native_height": ("sample", np.array([s.image.shape[0] for s in samples], np.int32)),
                "native_width": ("sample", np.array([s.image.shape[1] for s in samples], np.int32)),
                "present": (("sample", "class"), present),
                "caption": ("sample", np.array([s.caption for s in samples], dtype=object)),
                "source_id": ("sample", np.array([s.source_id for s in samples], dtype=object)),
            }
        )

    def _update_digest(self, batch: xr.Dataset) -> None:
        """Adds the batch's samples, in order, to the store's content digest."""
        for name in ("source_id", "caption"):
            self.digest.update("\0".join(str(v) for v in batch[name].values).encode() + b"\1")
        for name in ("image", "label", "label_height", "label_width", "native_height", "native_width"):
            self.digest.update(np.ascontiguousarray(batch[name].values).tobytes())

    def write(self, samples: list[RawSample]) -> None:
        if not samples:
            return
        batch = self.to_dataset(samples).assign_coords(sample=np.arange(self.count, self.count + len(samples)))
        self._update_digest(batch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # zarr's note that string dtypes are not yet in the v3 spec
            if self.count == 0:
                batch = batch.assign(class_name=("class", np.array(self.class_names, dtype=object)))
                label_rows = max(1, min(BATCH, LABEL_CHUNK_BYTES // (self.label_shape[0] * self.label_shape[1])))
                encoding = {
                    "image": {"chunks": (BATCH, *self.resolution, 3)},
                    "label": {"chunks": (label_rows, *self.label_shape)},
                }
                batch.to_zarr(self.tmp, mode="w", zarr_format=3, consolidated=False, encoding=encoding)
            else:
                batch.to_zarr(self.tmp, append_dim="sample", zarr_format=3, consolidated=False)
        self.count += len(samples)

    def finish(self, attrs: dict) -> None:
        """Records the final attrs (counts, skipped, the content digest) in `<path>.tmp`; `publish` moves it into
        place."""
        import zarr

        if self.count == 0:
            split, total = self.attrs.get("split", self.path.stem), attrs.get("total", 0)
            if not total:
                raise DataError(f"split '{split}' of the dataset source lists no samples: nothing to prepare")
            raise DataError(
                f"split '{split}': all {total} samples were skipped ({attrs.get('skipped')}): nothing usable to prepare"
            )
        group = zarr.open_group(self.tmp, mode="r+", zarr_format=3)
        group.attrs.update({**self.attrs, **attrs, "digest": self.digest.hexdigest()[:16]})  # appends reset attrs


def publish(path: Path, setting: str = "prepare.output") -> None:
    """Moves the finished `<path>.tmp` into place, replacing a previous store only if seg4diff wrote it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    check_replaceable(path, setting)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def open_prepared(path: Path) -> xr.Dataset:
    """Returns the lazily loaded prepared store at `path`, checking it is complete and of this schema."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prepared store {path} does not exist: run the prepare stage (dvc repro prepare)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dataset = xr.open_zarr(path, consolidated=False, zarr_format=3)
    if dataset.attrs.get("schema_version") != SCHEMA_VERSION:
        raise DataError(
            f"{path} has schema version {dataset.attrs.get('schema_version')}, expected {SCHEMA_VERSION}: re-run "
            "prepare"
        )
    return dataset


def preparation_settings(data: DataParams, prepare: PrepareParams) -> dict:
    """Returns the settings that decide a prepared store's content (not which splits, where, or on_error), as the
    store records them (`made_with`)."""
    return {
        "data": data.model_dump(mode="json"),
        "prepare": prepare.model_dump(mode="json", exclude={"splits", "output", "on_error"}),
    }


def settings_digest(settings: dict) -> str:
    """Returns a short hash of preparation settings (the store's `settings` attr)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def split_path(prepared: str | Path, split: str) -> Path:
    """Returns where the prepare stage writes `split` under its output directory `prepared` (prepare.output)."""
    return Path(prepared) / f"{split}.zarr"


def open_split(prepared: str | Path, split: str) -> xr.Dataset:
    """Returns the prepared store of `split` under `prepared` (prepare.output), opened lazily."""
    return open_prepared(split_path(prepared, split))


def prepared_split(params: Params, split: str) -> xr.Dataset:
    """Returns the prepared store of `split` as the settings place it; raises DataError, in one line, when it was
    prepared with other data or prepare settings (re-run prepare)."""
    path = split_path(params.prepare.output, split)
    dataset = open_prepared(path)
    expected = settings_digest(preparation_settings(params.data, params.prepare))
    if dataset.attrs.get("settings") != expected:
        raise DataError(
            f"prepared store {path} was made with other data/prepare settings (settings {dataset.attrs.get('settings')}"
            f", these are {expected}): re-run prepare (dvc repro prepare, or python -m flows.prepare)"
        )
    return dataset


def class_names(dataset: xr.Dataset) -> list[str]:
    """Returns the class names of a prepared store in id order."""
    return [str(name) for name in dataset["class_name"].values]


def require_captions(dataset: xr.Dataset, split: str, needed_by: str) -> None:
    """Raises DataError, in one line, when a prepared split has no caption at all but `needed_by` (a setting) reads
    them."""
    if not any(str(caption).strip() for caption in dataset["caption"].values):
        raise DataError(
            f"split '{split}' has no captions but {needed_by} needs them: give the source a captions file "
            f"(data.coco.splits.{split}.captions or data.mask_folder.splits.{split}.captions) or change {needed_by}"
        )
