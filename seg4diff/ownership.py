"""What the pipeline may delete or overwrite: only folders it wrote itself, which carry its marker file.

Every output folder seg4diff writes gets a small `.seg4diff` file naming what it is (adapters, fine-tuning work
folders), or, for its zarr stores, the attribute `written_by: seg4diff` in the store's zarr.json (zarr warns about
foreign files inside a store). A folder without it — a user's own, or one holding something else — is never
removed or written over: the stage refuses in one line naming the setting that points there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from seg4diff.errors import ConfigError

MARKER = ".seg4diff"
WRITTEN_BY = "seg4diff"
STORE_ATTRS = {"written_by": WRITTEN_BY}  # what a zarr store seg4diff writes carries in its attrs


def mark(folder: Path, kind: str) -> None:
    """Creates `folder` if needed and records that seg4diff wrote it (as a `kind`, e.g. "attention store")."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(json.dumps({"written_by": WRITTEN_BY, "kind": kind}) + "\n")


def is_ours(folder: Path) -> bool:
    """True when `folder` carries seg4diff's marker, or is a zarr store seg4diff wrote (its attrs say so, or have the
    schema_version and fingerprint/ignore_index of stores written before the attribute existed), or an adapter that
    seg4diff saved before the marker existed (a lora_config.json naming its expert layer and base model)."""
    folder = Path(folder)
    if (folder / MARKER).is_file():
        return True
    attrs = _json(folder / "zarr.json").get("attributes", {})
    if attrs.get("written_by") == WRITTEN_BY:
        return True
    if "schema_version" in attrs and ("fingerprint" in attrs or "ignore_index" in attrs):
        return True
    return {"expert_layer", "base_model"} <= set(_json(folder / "lora_config.json"))


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def check_replaceable(folder: Path, setting: str) -> None:
    """Raises ConfigError, in one line naming `setting`, unless `folder` is absent, empty or written by seg4diff."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir() or folder.is_symlink():
        raise ConfigError(
            f"{setting}: {folder} is a file or a link, not a folder seg4diff wrote: refusing to replace it; "
            "choose another path"
        )
    if is_ours(folder) or not any(folder.iterdir()):
        return
    raise ConfigError(
        f"{setting}: {folder} holds files seg4diff did not write (no {MARKER} marker): refusing to delete or "
        "overwrite them; choose another path or empty the folder yourself"
    )


def remove_ours(folder: Path, setting: str) -> None:
    """Deletes `folder` when seg4diff wrote it (or it is empty); refuses otherwise (check_replaceable)."""
    check_replaceable(folder, setting)
    if Path(folder).exists():
        shutil.rmtree(folder)
