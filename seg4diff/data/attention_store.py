"""The attention store: ONE zarr (format 3) store, written through xarray. The schema lives here only.

    image_to_text, text_to_image   (sample, layer, head, timestep, token, y, x)  float16, zstd, one shard per sample
        image_to_text[..., k, y, x] = P(image query at (y, x) attends text key in slot k)
        text_to_image[..., k, y, x] = P(text query in slot k attends image key at (y, x))
    token_position (sample, token) int32  position in the text sequence (−1: empty slot)
    token_class    (sample, token) int16  class id the token belongs to (−1: none, e.g. "and")
    token_encoder, token_text (sample, token) str
    image_to_text_mass, image_entropy (sample, layer, head, timestep, y, x)  optional diagnostics per image query:
        attention mass on all text keys, entropy of the full softmax row
    text_to_image_mass, text_entropy (sample, layer, head, timestep, token)   the same per kept text query
    prompt (sample) str;  complete (sample) bool  — written LAST for a sample, so a killed run never looks done
    Every chunk carries a CRC-32C checksum and every chunk of a complete sample exists (empty ones are written too):
    `damaged_samples` finds a complete sample whose file is missing, truncated or altered; `load_samples` reads
    samples and names the sample and file a failed read comes from.
    coords: sample (index in the prepared split), layer, head (−1: head mean), timestep (the scheduler's timestep the
        transformer was given, σ·1000) with `sigma` (the noise level σ) along it, token (slot), y, x
attrs: schema_version, fingerprint (of everything that decides the content, the prepared split's digest included),
    prepared_digest (the digest of the prepared split it was made from), the settings readers need

Select noise levels by σ with `store.swap_dims(timestep="sigma").sel(sigma=...)`, or through `sigma_index`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from seg4diff.backbones.noise import scheduler_timesteps
from seg4diff.errors import ConfigError, DataError
from seg4diff.ownership import STORE_ATTRS

SCHEMA_VERSION = 3  # 2: `timestep` holds scheduler timesteps, σ its `sigma` coordinate; 3: checksums, provenance
DIMS = ("sample", "layer", "head", "timestep", "token", "y", "x")
ATTENTION = ("image_to_text", "text_to_image")
IMAGE_DIAGNOSTICS = ("image_to_text_mass", "image_entropy")
TEXT_DIAGNOSTICS = ("text_to_image_mass", "text_entropy")
IMAGE_DIAGNOSTIC_DIMS = ("sample", "layer", "head", "timestep", "y", "x")
TEXT_DIAGNOSTIC_DIMS = ("sample", "layer", "head", "timestep", "token")
TOKEN_VARS = {"token_position": np.int32, "token_class": np.int16}
TEXT_VARS = ("token_encoder", "token_text")
PER_SAMPLE = (*ATTENTION, *IMAGE_DIAGNOSTICS, *TEXT_DIAGNOSTICS, *TOKEN_VARS, *TEXT_VARS, "prompt")  # "complete" aside


class StoreVersionError(ConfigError):
    """The store was written by another schema version of seg4diff: rebuilding it is the fix, not a retry."""


@dataclass(frozen=True)
class StoreLayout:
    samples: int
    layers: list[int]
    heads: list[int]
    sigmas: list[float]
    tokens: int
    grid: tuple[int, int]
    directions: tuple[str, ...]
    diagnostics: bool = False
    blocks: tuple[str, ...] = ()  # each layer's name by stream ("double 7", "single 0"); empty: "layer <i>"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (1, len(self.layers), len(self.heads), len(self.sigmas), self.tokens, *self.grid)

    def sample_bytes(self, tokens: float | None = None) -> float:
        """Returns the float16 bytes one sample writes with `tokens` kept text tokens (None: every slot full).

        Empty token slots are zeros, which zstd stores in next to nothing: with the real token count this is what
        a sample costs on disk (before compression of the maps themselves), with None an upper bound.
        """
        tokens = self.tokens if tokens is None else tokens
        planes = len(self.layers) * len(self.heads) * len(self.sigmas)
        pixels = self.grid[0] * self.grid[1]
        attention = len(self.directions) * planes * tokens * pixels
        diagnostics = (
            (len(IMAGE_DIAGNOSTICS) * planes * pixels + len(TEXT_DIAGNOSTICS) * planes * tokens)
            if self.diagnostics
            else 0
        )
        return 2.0 * (attention + diagnostics)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # every chunk written, even one equal to the fill value: a missing file then always means a damaged sample
    with warnings.catch_warnings(), zarr.config.set({"array.write_empty_chunks": True}):
        warnings.simplefilter("ignore", UserWarning)  # zarr: string dtypes are not yet part of the v3 spec
        yield


def create_store(path: Path, layout: StoreLayout, attrs: dict) -> None:
    """Writes the store's metadata (no chunk data): every sample starts incomplete."""
    n = layout.samples
    shape = (n, *layout.sample_shape[1:])
    inner = (1, 1, *layout.sample_shape[2:])  # one chunk per (sample, layer) inside one shard per sample
    variables = {
        name: (DIMS, da.zeros(shape, dtype=np.float16, chunks=layout.sample_shape)) for name in layout.directions
    }
    if layout.diagnostics:
        per_sample = layout.sample_shape
        image_shape, text_shape = (*per_sample[:4], *per_sample[5:]), per_sample[:5]
        variables |= {
            name: (IMAGE_DIAGNOSTIC_DIMS, da.zeros((n, *image_shape[1:]), np.float32, chunks=image_shape))
            for name in IMAGE_DIAGNOSTICS
        }
        variables |= {
            name: (TEXT_DIAGNOSTIC_DIMS, da.zeros((n, *text_shape[1:]), np.float32, chunks=text_shape))
            for name in TEXT_DIAGNOSTICS
        }
    variables |= {
        name: (("sample", "token"), da.full((n, layout.tokens), -1, dtype=dtype, chunks=(1, layout.tokens)))
        for name, dtype in TOKEN_VARS.items()
    }
    variables |= {name: (("sample", "token"), np.full((n, layout.tokens), "", dtype=object)) for name in TEXT_VARS}
    variables |= {
        "prompt": (("sample",), np.full(n, "", dtype=object)),
        "complete": (("sample",), da.zeros(n, dtype=bool, chunks=1)),
    }
    dataset = xr.Dataset(
        variables,
        coords={
            "sample": np.arange(n),
            "layer": layout.layers,
            "block": ("layer", list(layout.blocks) or [f"layer {layer}" for layer in layout.layers]),
            "head": layout.heads,
            "timestep": scheduler_timesteps(layout.sigmas),
            "sigma": ("timestep", np.asarray(layout.sigmas, dtype=np.float64)),
            "token": np.arange(layout.tokens),
            "y": np.arange(layout.grid[0]),
            "x": np.arange(layout.grid[1]),
        },
        attrs={"schema_version": SCHEMA_VERSION, **STORE_ATTRS, **attrs},
    )
    checked = [zarr.codecs.ZstdCodec(level=3), zarr.codecs.Crc32cCodec()]  # a flipped byte fails its read
    encoding = {
        name: {"chunks": inner, "shards": layout.sample_shape, "compressors": checked} for name in layout.directions
    }
    if layout.diagnostics:
        encoding |= {
            name: {"chunks": variables[name][1].chunksize, "compressors": checked}
            for name in (*IMAGE_DIAGNOSTICS, *TEXT_DIAGNOSTICS)
        }
    encoding |= {name: {"chunks": (1, layout.tokens), "compressors": checked} for name in (*TOKEN_VARS, *TEXT_VARS)}
    encoding |= {name: {"chunks": (1,), "compressors": checked} for name in ("prompt", "complete")}
    with _quiet():  # dask-backed variables stay unwritten (compute=False); the small string ones are written empty
        dataset.to_zarr(path, mode="w", zarr_format=3, consolidated=False, compute=False, encoding=encoding)


@dataclass
class SampleRecord:
    """Everything the store holds for a run of consecutive samples starting at `start`."""

    start: int
    attention: dict[str, np.ndarray]  # name → (n, layer, head, timestep, token, y, x), or a diagnostic's dims
    token_position: np.ndarray  # (n, token)
    token_class: np.ndarray
    token_encoder: np.ndarray  # (n, token) str
    token_text: np.ndarray
    prompt: np.ndarray  # (n,) str


def write_samples(path: Path, record: SampleRecord) -> None:
    """Writes the samples' data, then (last) their complete flags; each sample is its own shard, so writers never
    clash."""
    n = len(record.prompt)
    region = {"sample": slice(record.start, record.start + n)}
    dims = {
        **dict.fromkeys(ATTENTION, DIMS),
        **dict.fromkeys(IMAGE_DIAGNOSTICS, IMAGE_DIAGNOSTIC_DIMS),
        **dict.fromkeys(TEXT_DIAGNOSTICS, TEXT_DIAGNOSTIC_DIMS),
    }
    data = {
        name: (dims[name], values.astype(np.float16 if name in ATTENTION else np.float32))
        for name, values in record.attention.items()
    }
    data |= {
        "token_position": (("sample", "token"), record.token_position.astype(np.int32)),
        "token_class": (("sample", "token"), record.token_class.astype(np.int16)),
        "token_encoder": (("sample", "token"), record.token_encoder.astype(object)),
        "token_text": (("sample", "token"), record.token_text.astype(object)),
        "prompt": (("sample",), record.prompt.astype(object)),
    }
    with _quiet():
        xr.Dataset(data).to_zarr(path, region=region, consolidated=False)
        xr.Dataset({"complete": (("sample",), np.ones(n, dtype=bool))}).to_zarr(path, region=region, consolidated=False)


def open_attention(path: Path) -> xr.Dataset:
    """Returns the store as lazy (dask-backed) arrays; fails clearly if it is missing or of another schema."""
    path = Path(path)
    if not (path / "zarr.json").exists():
        raise FileNotFoundError(f"attention store {path} does not exist: run the extract stage (dvc repro extract)")
    with _quiet():
        dataset = xr.open_zarr(path, consolidated=False, zarr_format=3)
    version = dataset.attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StoreVersionError(
            f"attention store {path} has schema version {version}, this seg4diff reads version "
            f"{SCHEMA_VERSION}: rebuild it (delete {path}, then `dvc repro extract` or `python -m flows.extract`)"
        )
    return dataset


def sigma_index(store: xr.Dataset, sigmas: list[float]) -> list[int]:
    """Returns the positions along `timestep` of the noise levels `sigmas`; raises ValueError naming any not stored."""
    stored = [float(s) for s in store["sigma"].values]
    unknown = sorted(set(sigmas) - set(stored))
    if unknown:
        raise ValueError(f"sigmas {unknown} are not in the attention store (stored: {stored})")
    return [stored.index(s) for s in sigmas]


def damaged_samples(path: Path, samples: list[int] | None = None, decode: bool = True) -> dict[int, str]:
    """Returns {sample: what is wrong, naming the file} for the complete samples of the store at `path` (all, or those
    of `samples`) whose chunk file is missing or, with `decode`, does not decode (truncated, altered: a checksum or
    zstd error).

    Decoding reads every checked sample once, about 256 MB at a time, then sample by sample only inside a block that
    failed; without it only the files' presence is checked (milliseconds)."""
    path = Path(path)
    group = zarr.open_group(path, mode="r", zarr_format=3)
    done = np.asarray(group["complete"][:], dtype=bool)
    checked = [int(i) for i in (np.flatnonzero(done) if samples is None else samples) if done[i]]
    damaged: dict[int, str] = {}
    for name in (n for n in PER_SAMPLE if n in group):
        array = group[name]
        file = lambda i: path / name / array.metadata.encode_chunk_key((i,) + (0,) * (array.ndim - 1))  # noqa: E731
        damaged |= {i: f"{file(i)} is missing" for i in checked if i not in damaged and not file(i).is_file()}
        if not decode:
            continue
        todo = [i for i in checked if i not in damaged]
        block = max(1, (256 << 20) // max(1, array.nbytes // max(1, array.shape[0])))
        for start in range(0, len(todo), block):
            part = todo[start : start + block]
            try:
                with _quiet():
                    array.get_orthogonal_selection((part,))
            except Exception:  # noqa: BLE001 - which sample failed is what matters, found one by one
                for i in part:
                    try:
                        with _quiet():
                            array[i]
                    except Exception as error:  # noqa: BLE001
                        damaged[i] = f"{file(i)} does not decode ({type(error).__name__}: {error})"
    return dict(sorted(damaged.items()))


def refuse_damaged(path: Path, decode: bool = True) -> None:
    """Raises DataError, in one line naming the samples and files, when complete samples of the store are damaged."""
    _raise_damaged(path, damaged_samples(path, decode=decode))


def _raise_damaged(path: Path, damaged: dict[int, str]) -> None:
    if damaged:
        first = "; ".join(f"sample {i}: {what}" for i, what in list(damaged.items())[:3])
        raise DataError(
            f"attention store {path} has {len(damaged)} damaged sample(s) ({first}): re-run extract, which "
            "recomputes them"
        )


def load_samples(store: xr.Dataset, samples: int | list[int] | slice, **selection) -> xr.Dataset:
    """Returns `store.isel(sample=samples, **selection)` loaded into memory; a chunk that does not decode raises
    DataError naming the sample and the file (the read itself is the integrity check: nothing is read twice)."""
    try:
        return store.isel(sample=samples, **selection).load()
    except Exception:
        path = store.encoding.get("source")
        if path is None:
            raise
        indices = np.atleast_1d(store.sample.values[samples]).tolist()
        _raise_damaged(path, damaged_samples(Path(path), indices))
        raise  # not damage: the original error stands


def discard_samples(path: Path, samples: list[int]) -> None:
    """Clears the complete flags of `samples`, then deletes their chunk files (a damaged shard cannot even be
    overwritten: zarr reads a shard before writing into it), so the next extraction recomputes them from scratch."""
    path = Path(path)
    group = zarr.open_group(path, mode="r+", zarr_format=3)
    with _quiet():
        for i in samples:
            group["complete"][i] = False
    for name in (n for n in PER_SAMPLE if n in group):
        array = group[name]
        for i in samples:
            (path / name / array.metadata.encode_chunk_key((i,) + (0,) * (array.ndim - 1))).unlink(missing_ok=True)


def completed(path: Path) -> np.ndarray:
    """Returns the per-sample complete flags (all False when the store does not exist yet)."""
    group = zarr.open_group(path, mode="r", zarr_format=3)
    return np.asarray(group["complete"][:], dtype=bool)


def store_fingerprint(path: Path) -> str | None:
    """Returns the fingerprint attr of an existing store (None when there is none)."""
    if not (Path(path) / "zarr.json").exists():
        return None
    return zarr.open_group(path, mode="r", zarr_format=3).attrs.get("fingerprint")


def kept_path(path: Path, fingerprint: str) -> Path:
    """Returns where a store of another `fingerprint` is kept when the settings change: beside it, named by it."""
    path = Path(path)
    return path.with_name(f"{path.name}.kept-{fingerprint}")


def check_provenance(store: xr.Dataset, path: Path, prepared: xr.Dataset, prepared_path: str | Path) -> None:
    """Raises DataError, in one line, when the store was extracted from another version of the prepared split."""
    made_from, now = store.attrs.get("prepared_digest"), prepared.attrs.get("digest")
    if made_from != now:
        raise DataError(
            f"attention store {path} was extracted from another version of the prepared split {prepared_path} "
            f"(digest {made_from}; it is now {now}): re-run extract (dvc repro extract, or python -m flows.extract)"
        )
