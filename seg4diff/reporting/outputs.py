"""Tracked text outputs written reproducibly: floats at a stated precision, files left alone when nothing changed.

Numbers computed on another machine differ in their last bits (BLAS kernels, instruction sets); rounded to
SIGNIFICANT_DIGITS they are the same text, so `git status` and `dvc status` stay clean when the science did not change.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

SIGNIFICANT_DIGITS = 6


def round_floats(value, digits: int = SIGNIFICANT_DIGITS):
    """Returns `value` with every float (in nested dicts, lists and tuples) rounded to `digits` significant digits."""
    if isinstance(value, float):
        return value if not math.isfinite(value) or value == 0 else float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {key: round_floats(item, digits) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [round_floats(item, digits) for item in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalars
        return round_floats(value.item(), digits)
    return value


def write_text(path: str | Path, text: str) -> bool:
    """Writes `text` unless the file already holds exactly it (its timestamp then stays); returns whether it wrote."""
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True


def write_json(path: str | Path, data, digits: int = SIGNIFICANT_DIGITS) -> bool:
    """Writes `data` as indented JSON with floats rounded to `digits` significant digits; returns whether it wrote."""
    return write_text(path, json.dumps(round_floats(data, digits), indent=2) + "\n")


def write_csv(frame: pd.DataFrame, path: str | Path, digits: int = SIGNIFICANT_DIGITS) -> bool:
    """Writes a table as CSV with floats at `digits` significant digits; returns whether it wrote."""
    return write_text(path, frame.to_csv(index=False, float_format=f"%.{digits}g"))
