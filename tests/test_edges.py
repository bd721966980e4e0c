"""Errors at the edge, in one line: settings checked against the files and the machine when they are validated, a
full disk that is not retried and names the samples being written, a bad input told without a traceback."""

import errno
import json
import os
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, base_params
from PIL import Image

from seg4diff.config import check_stage, parse_params
from seg4diff.config.checks import model_layer_count
from seg4diff.errors import ConfigError, ResourceError
from tasks.retry import is_transient


def _coco_params(tmp_path: Path, splits=("val",), **prepare) -> dict:
    raw = base_params(tmp_path)
    raw["data"] = {
        "source": "coco",
        "root": str(tmp_path / "coco"),
        "coco": {"splits": {"val": {"annotations": "annotations/val.json", "images": "images/val"}}},
    }
    raw["prepare"] |= {"splits": list(splits), **prepare}
    return raw


def test_a_missing_dataset_folder_an_unknown_split_and_a_missing_file_are_refused_before_prepare(tmp_path):
    with pytest.raises(ConfigError, match=r"^stage prepare: data.root .*coco does not exist \(the coco dataset"):
        check_stage(parse_params(_coco_params(tmp_path)), "prepare")
    (tmp_path / "coco" / "images" / "val").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"prepare.splits \['test'\] are not configured in data.coco.splits"):
        check_stage(parse_params(_coco_params(tmp_path, splits=("val", "test"))), "prepare")
    with pytest.raises(ConfigError, match=r"data.coco.splits.val.annotations: .*annotations/val.json does not exist"):
        check_stage(parse_params(_coco_params(tmp_path)), "prepare")
    (tmp_path / "coco" / "annotations").mkdir()
    (tmp_path / "coco" / "annotations" / "val.json").write_text("{}")
    check_stage(parse_params(_coco_params(tmp_path)), "prepare")  # everything there: it can run
    check_stage(parse_params(_coco_params(tmp_path / "gone")), "score")  # only prepare reads the raw dataset
    shapes = base_params(tmp_path)
    shapes["prepare"]["splits"] = ["val", "holdout"]
    with pytest.raises(ConfigError, match=r"prepare.splits \['holdout'\]: Shapes has only the splits"):
        check_stage(parse_params(shapes), "prepare")


def test_layer_settings_outside_the_model_are_refused_when_validated(tiny_model_dirs, tmp_path):
    from seg4diff.backbones.backbone import load_backbone
    from seg4diff.capture.families import FAMILIES, all_layers
    from seg4diff.capture.layer_count import LAYER_COUNT_KEYS
    from seg4diff.config import ModelParams

    assert set(LAYER_COUNT_KEYS) == set(FAMILIES)  # a family row and its count rule go together
    for name in ("sd3", "flux"):  # the count read from config.json is the one the loaded model has
        model = ModelParams(path=str(tiny_model_dirs[name]))
        assert model_layer_count(model) == len(all_layers(load_backbone(model).transformer))
    count = model_layer_count(ModelParams(path=str(tiny_model_dirs["sd3"])))
    raw = base_params(tmp_path)
    raw["model"] = {"path": str(tiny_model_dirs["sd3"])}

    def check(stage, **groups):
        check_stage(parse_params({**raw, **groups}), stage)

    with pytest.raises(ConfigError, match=rf"extract.layers \[99\] outside the model's layers 0…{count - 1}"):
        check("extract", extract={"layers": [0, 99]})
    with pytest.raises(ConfigError, match=rf"select.force_layer \[99\] outside the model's layers 0…{count - 1}"):
        check("select", select={"force_layer": 99})
    with pytest.raises(ConfigError, match=r"select.force_layer \[1\] are not among the extracted extract.layers \[0\]"):
        check("select", select={"force_layer": 1}, extract={"layers": [0]})
    with pytest.raises(ConfigError, match=r"causal.layers \[-1\] outside the model's layers"):
        check("causal", causal={"layers": [-1]})
    check("extract", extract={"layers": [0, count - 1]})
    check("select", select={"force_layer": 0}, extract={"layers": [0]})


def test_a_gpu_device_on_a_machine_without_one_is_refused_before_the_stage_runs(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    raw = base_params(tmp_path)
    raw["model"]["device"] = "cuda"
    params = parse_params(raw)
    for stage in ("extract", "causal", "finetune", "evaluate"):
        with pytest.raises(ConfigError, match=r"model.device is 'cuda' but this machine has no CUDA device"):
            check_stage(params, stage)
    check_stage(params, "score")  # reads the store only


def test_a_full_disk_is_not_transient_and_names_the_samples_being_written(tmp_path):
    from seg4diff.capture.extract import _finish_write

    assert not is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_transient(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_transient(OSError(errno.EIO, "I/O error"))  # a flaky disk may recover
    failed = Future()
    failed.set_exception(OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(ResourceError, match=r"^extract: no space left writing samples \[4, 5\] to .*a.zarr") as raised:
        _finish_write(tmp_path / "a.zarr", failed, [4, 5])
    assert not is_transient(raised.value)  # its chain holds the OSError: still not retried


def test_a_full_disk_during_extraction_names_the_written_batch_not_the_computed_one(
    tiny_model_dirs, tmp_path, monkeypatch
):
    from test_store_trust import _params, _prepare

    from tasks.extract import extract_range_task, plan_extraction_task

    params = _params(tmp_path, tiny_model_dirs["sd3"])
    _prepare(params)
    plan = plan_extraction_task.fn(params)

    def full(path, record):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("seg4diff.capture.extract.write_samples", full)
    with pytest.raises(ResourceError, match=r"no space left writing samples \[0, 1\]"):  # batch [2, 3] was computing
        extract_range_task.fn(params, 0, 4, plan["sigmas"], plan["layers"])


@pytest.mark.slow
def test_a_corrupt_image_with_on_error_fail_is_one_line_on_the_command_line_not_a_traceback(tmp_path):
    images = tmp_path / "coco" / "images" / "val"
    images.mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / "good.png")
    (images / "bad.png").write_bytes(b"not an image")
    (tmp_path / "coco" / "annotations").mkdir()
    record = {"height": 32, "width": 32}
    coco = {
        "images": [{"id": 1, "file_name": "good.png", **record}, {"id": 2, "file_name": "bad.png", **record}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 9, 0, 9, 9]], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "dog"}],
    }
    (tmp_path / "coco" / "annotations" / "val.json").write_text(json.dumps(coco))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_coco_params(tmp_path, on_error="fail")))
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "flows.prepare", "--params", "params.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1
    assert "Traceback" not in output and len(output.splitlines()) < 15
    assert done.stderr.splitlines()[-1].startswith("prepare: corrupt_image: split 'val', sample '2': ")
    assert "bad.png cannot be decoded" in done.stderr.splitlines()[-1]
