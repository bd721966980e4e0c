"""The readouts stage's maps of the explorer's images (the first `explore.samples` of the selection split), so the
explorer can show each readout's maps beside the stored attention."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np


def readout_maps_path(readouts_store: str | Path) -> Path:
    """Where the readouts stage keeps the maps: beside its report store (one DVC output, data/readouts)."""
    return Path(readouts_store).parent / "explorer_maps.npz"


def write_readout_maps(path: Path, rows: list[dict], thresholds: list[float], maps: list[np.ndarray]) -> None:
    """Writes, atomically, every readout's name, what it reads, its blocks and val-chosen threshold (`rows`, in table
    order) and per image its maps (readout, class, y, x): an .npz whose bytes depend on the arrays only (fixed zip
    timestamps), so a rerun reproduces the DVC output's hash."""
    arrays = {
        "names": np.array([row["readout"] for row in rows]),
        "reads": np.array([row["reads"] for row in rows]),
        "blocks": np.array([row["blocks"] for row in rows]),
        "thresholds": np.array(thresholds, dtype=np.float64),
        **{f"sample_{s}": m.astype(np.float32) for s, m in enumerate(maps)},
    }
    partial = path.with_suffix(".partial.npz")
    with zipfile.ZipFile(partial, "w") as archive:
        for key, value in arrays.items():
            entry = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(entry, "w") as file:
                np.lib.format.write_array(file, value, allow_pickle=False)
    partial.replace(path)


def read_readout_maps(path: Path) -> dict | None:
    """Returns {names, reads, blocks, thresholds, maps: per image (readout, class, y, x)}, or None when the readouts
    stage has not written them."""
    if not path.exists():
        return None
    with np.load(path) as saved:
        count = sum(key.startswith("sample_") for key in saved.files)
        return {k: saved[k].tolist() for k in ("names", "reads", "blocks", "thresholds")} | {
            "maps": [saved[f"sample_{s}"] for s in range(count)]
        }
