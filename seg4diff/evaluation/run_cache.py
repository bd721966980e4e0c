"""The finished parts of a long measurement (the causal stage's generations), kept in a work folder so that an
interrupted run resumes where it stopped: each part is saved once computed, as numbers only (.npz read without
pickle), written to a temporary file and renamed, so a part is either whole or absent.

The folder is claimed like a training work folder (seg4diff.work_folder.claim_work_dir): one seg4diff did not write is
refused, parts of other settings are moved aside inside it, never deleted."""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import numpy as np

from seg4diff.errors import DataError
from seg4diff.work_folder import WorkFolder, claim_work_dir

CAUSAL = WorkFolder("causal.work_dir", "causal run")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class RunCache:
    """Parts of one run by name; `folder` None keeps nothing (every part is computed)."""

    def __init__(self, folder: str | Path | None, settings: str = "", work: WorkFolder = CAUSAL):
        self.folder, self.work = (Path(folder) if folder is not None else None), work
        if self.folder is not None:
            print(claim_work_dir(self.folder, settings, work))  # one line: resumed, started, or moved aside

    def get(self, name: str) -> dict[str, np.ndarray] | None:
        """Returns the arrays saved as `name`, None when that part is not done; a damaged part raises DataError naming
        the file."""
        path = self._path(name)
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as saved:
                return {key: saved[key] for key in saved.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise DataError(
                f"{path}: an unreadable part of a saved {self.work.run} ({type(error).__name__}: {error}): delete it "
                "to recompute that part"
            ) from None

    def put(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        """Saves `arrays` as part `name` (atomically: a part interrupted while written is absent, not half there)."""
        path = self._path(name)
        if path is None:
            return
        tmp = path.with_name(f".tmp-{path.name}")
        with open(tmp, "wb") as handle:
            np.savez(handle, **{key: np.asarray(value) for key, value in arrays.items()})
        os.replace(tmp, path)

    def _path(self, name: str) -> Path | None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"a run part's name is letters, digits, '_', '.', '-': got {name!r}")
        return self.folder / f"{name}.npz" if self.folder is not None else None
