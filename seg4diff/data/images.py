"""Reading images and label maps from disk safely: paths confined to their root, any bit depth to 8-bit RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from seg4diff.data.sample import SampleError


def resolve_inside(root: Path, relative: str) -> Path:
    """Returns root/relative, refusing a path that escapes root (`../`, absolute paths, symlinks out)."""
    root = root.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise SampleError("path_outside_root", f"{relative!r} resolves to {path}, outside {root}")
    return path


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise SampleError("missing_image", f"{path} does not exist")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise SampleError("corrupt_image", f"{path} cannot be decoded: {error}") from None
    return image


def read_rgb(path: Path) -> np.ndarray:
    """Returns (height, width, 3) uint8 RGB: grayscale replicated, alpha dropped, 16-bit scaled to 8-bit."""
    image = _open(path)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(image, dtype=np.int64)
        top = 65535 if wide.max() > 255 else 255
        image = Image.fromarray((wide * 255 // top).astype(np.uint8), mode="L")
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_label(path: Path) -> np.ndarray:
    """Returns a (height, width) uint8 label map from a single-channel PNG (palette indices kept as ids)."""
    if not path.is_file():
        raise SampleError("missing_label", f"{path} does not exist")
    image = _open(path)
    if image.mode not in ("L", "P", "I", "I;16"):
        raise SampleError("label_not_single_channel", f"{path} has mode {image.mode}; expected a single-channel PNG")
    label = np.asarray(image)
    if label.max(initial=0) > 255:
        raise SampleError("label_out_of_range", f"{path} holds ids up to {label.max()}; ids must be < 256")
    return label.astype(np.uint8)
