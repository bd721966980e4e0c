"""seg4diff: open-vocabulary segmentation from the joint attention of MM-DiT text-to-image models.

The notebook API, imported on first use (so that `import seg4diff.data…` stays light):

    from seg4diff import capture_attention, perturb_attention, trace, load_backbone
"""

from __future__ import annotations

import importlib

NOTEBOOK_API = {
    "capture_attention": "seg4diff.capture.attention",
    "perturb_attention": "seg4diff.capture.perturb",
    "trace": "seg4diff.capture.trace",
    "load_backbone": "seg4diff.backbones.backbone",
}
__all__ = list(NOTEBOOK_API)


def __getattr__(name: str):
    if name in NOTEBOOK_API:
        return getattr(importlib.import_module(NOTEBOOK_API[name]), name)
    raise AttributeError(f"module 'seg4diff' has no attribute {name!r}")
