import os
import sys
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from seg4diff.numerics import pin_cpu_numerics  # noqa: E402

pin_cpu_numerics()  # as every entry point does, before torch runs anything

import pytest  # noqa: E402
from tiny_pipelines import tiny_flux_pipeline, tiny_sd3_pipeline  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need a CUDA device: skipped, with the reason, where there is none."""
    import torch

    if torch.cuda.is_available():
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device (marked gpu)"))


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tiny random SD3, SD3.5-style and FLUX pipelines saved with save_pretrained (safetensors)."""
    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for name, pipe in {
        "sd3": tiny_sd3_pipeline(),
        "sd35": tiny_sd3_pipeline(sd35=True),
        "flux": tiny_flux_pipeline(),
    }.items():
        pipe.save_pretrained(root / name, safe_serialization=True)
        dirs[name] = root / name
    return dirs


def prepared_shapes(
    root: Path, splits: list[str], resolution: int, label_resolution: int, seed: int, settings=None, **counts
) -> Path:
    """Generates a small Shapes dataset under root and prepares `splits` as root/<split>.zarr; returns root.

    `settings`: the preparation_settings to record, for stores read back through a Params (prepared_split)."""
    from seg4diff.config import DataParams, PrepareParams, ShapesParams
    from seg4diff.data.prepare import build_source, prepare_split
    from seg4diff.data.shapes import generate_shapes

    shapes = ShapesParams(image_size=32, seed=seed, **{"num_train": 1, "num_val": 1, "num_test": 1, **counts})
    generate_shapes(root, shapes, splits)
    source = build_source(DataParams(source="shapes", root=str(root), shapes=shapes), splits)
    for split in splits:
        prepare_split(
            source,
            split,
            root / f"{split}.zarr",
            PrepareParams(resolution=resolution, label_resolution=label_resolution),
            progress=False,
            settings=settings,
        )
    return root


def base_params(tmp_path: Path, **data_overrides) -> dict:
    """A small, valid params dict whose outputs all live under tmp_path."""
    return {
        "model": {"path": str(tmp_path / "model")},
        "data": {
            "source": "shapes",
            "root": str(tmp_path / "raw"),
            "shapes": {"image_size": 32, "num_train": 12, "num_val": 4, "num_test": 6, "seed": 3},
            **data_overrides,
        },
        "prepare": {"resolution": 32, "label_resolution": 32, "output": str(tmp_path / "prepared")},
        "tracking": {"mlflow_db": str(tmp_path / "mlflow.db")},
    }
