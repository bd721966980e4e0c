"""Dataset presets read each benchmark as distributed: small replicas with the real folder nesting and file naming,
prepared with nothing skipped. Backbone presets hold the paper's protocol."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from seg4diff.config import check_stage, load_params, preset_names
from seg4diff.data.prepare import build_source, prepare_split, skip_line
from seg4diff.data.prepared import label_sizes, open_prepared, require_captions
from seg4diff.errors import ConfigError, DataError

RNG = np.random.default_rng(0)
H, W = 24, 32  # not square, as real photos


def _image(path: Path, suffix: str = ".jpg") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(
        path.with_name(path.name + suffix) if suffix else path
    )


def _label(path: Path, ids: list[int], palette: bool = False) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    label = np.array(ids, np.uint8)[RNG.integers(0, len(ids), (H, W))]
    image = Image.fromarray(label, mode="L")
    (image.convert("P") if palette else image).save(path)
    return label


def _listed_layout(
    base: Path, labels_folder: str, ids_file: str, names: list[str], ids: list[int], palette: bool = False
) -> Path:
    """JPEGImages/<id>.jpg, <labels_folder>/<id>.png and an ids file: the VOC and Pascal-Context layout."""
    for name in names:
        _image(base / "JPEGImages" / name)
        _label(base / labels_folder / f"{name}.png", ids, palette)
    (base / ids_file).parent.mkdir(parents=True)
    (base / ids_file).write_text("".join(f"{name}\n" for name in names))
    return base


def voc(root: Path) -> Path:
    return _listed_layout(
        root / "VOCdevkit/VOC2012",
        "SegmentationClass",
        "ImageSets/Segmentation/val.txt",
        ["2007_000032", "2007_000039"],
        [0, 1, 15, 255],
        palette=True,
    )


def pascal_context(root: Path) -> Path:
    return _listed_layout(
        root / "VOCdevkit/VOC2010",
        "SegmentationClassContext",
        "ImageSets/SegmentationContext/val.txt",
        ["2008_000002", "2008_000008"],
        [0, 1, 33, 59],
    )


def ade(root: Path) -> Path:
    base = root / "ADEChallengeData2016"
    for name in ("ADE_val_00000001", "ADE_val_00000002"):
        _image(base / "images/validation" / name)
        _label(base / "annotations/validation" / f"{name}.png", [0, 1, 77, 150])
    return base


def cityscapes(root: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Frankfurt with labelIds only (as downloaded); Lindau with labelTrainIds too (after cityscapesscripts)."""
    base, labels = root / "cityscapes", {}
    for city, name in (("frankfurt", "frankfurt_000000_000294"), ("lindau", "lindau_000000_000019")):
        _image(base / "leftImg8bit/val" / city / f"{name}_leftImg8bit.png", suffix="")
        labels[name] = _label(base / "gtFine/val" / city / f"{name}_gtFine_labelIds.png", [1, 7, 26, 33, 34])
        (base / "gtFine/val" / city / f"{name}_gtFine_color.png").write_bytes(b"not read")
    train_ids = {7: 0, 26: 13, 33: 18}
    lindau = labels["lindau_000000_000019"]
    mapped = np.vectorize(lambda i: train_ids.get(int(i), 255))(lindau).astype(np.uint8)
    Image.fromarray(mapped, mode="L").save(base / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelTrainIds.png")
    return base, labels


def coco(root: Path) -> Path:
    """COCO as distributed: val2017 (one image) and train2017 (two), instances and captions of both."""
    base = root / "coco"
    (base / "annotations").mkdir(parents=True)
    for split, ids in {"val2017": [139], "train2017": [9, 25]}.items():
        for image_id in ids:
            _image(base / split / f"{image_id:012d}", suffix=".jpg")
        annotations = {
            "images": [{"id": i, "file_name": f"{i:012d}.jpg", "height": H, "width": W} for i in ids],
            "categories": [{"id": 1, "name": "person"}, {"id": 62, "name": "chair"}],
            "annotations": [
                {
                    "id": k + 1,
                    "image_id": i,
                    "category_id": 62,
                    "iscrowd": 0,
                    "area": 80.0,
                    "segmentation": [[2, 2, 12, 2, 12, 10, 2, 10]],
                    "bbox": [2, 2, 10, 8],
                }
                for k, i in enumerate(ids)
            ],
        }
        (base / f"annotations/instances_{split}.json").write_text(json.dumps(annotations))
        captions = [{"id": 100 + k, "image_id": i, "caption": "A chair in a room."} for k, i in enumerate(ids)]
        if split == "val2017":
            captions = [
                {"id": 5, "image_id": 139, "caption": "A living room with a chair. "},
                {"id": 2, "image_id": 139, "caption": " A person sits on a chair."},
            ]
        (base / f"annotations/captions_{split}.json").write_text(json.dumps({"annotations": captions}))
    return base


def coco_stuff(root: Path) -> Path:
    """COCO's val2017/ images and stuffthingmaps_trainval2017/val2017/ label PNGs (COCO-Stuff id − 1, 255
    unlabelled)."""
    base = root / "cocostuff"
    for name in ("000000000139", "000000000285"):
        _image(base / "val2017" / name)
        _label(base / "stuffthingmaps_trainval2017/val2017" / f"{name}.png", [0, 2, 61, 118, 156, 181, 255])
    return base


LAYOUTS = {
    "voc21": (voc, 21),
    "voc20": (voc, 20),
    "pc60": (pascal_context, 60),
    "pc59": (pascal_context, 59),
    "ade150": (ade, 150),
    "cityscapes": (lambda root: cityscapes(root)[0], 19),
    "coco-object": (coco, 3),
    "coco-stuff27": (coco_stuff, 27),
}  # the replica's JSON holds 2 of the 80 categories, + background


@pytest.mark.parametrize("preset", LAYOUTS)
def test_dataset_preset_prepares_the_distributed_layout_with_nothing_skipped(preset, tmp_path):
    build, classes = LAYOUTS[preset]
    root = build(tmp_path / "raw")
    params = load_params(REPO / "params.yaml", {"data": {"root": str(root)}, "prepare": {"resolution": 32}}, [preset])
    source = build_source(params.data, params.prepare.splits)
    assert len(source.class_names) == classes
    summary = prepare_split(source, "val", tmp_path / "val.zarr", params.prepare, progress=False)
    assert summary.total >= 1 and summary.kept == summary.total and not summary.skipped, summary.skipped_examples
    prepared = open_prepared(tmp_path / "val.zarr")
    labels = prepared["label"].values
    assert set(np.unique(labels)) <= set(range(classes)) | {255} and (labels != 255).any()
    assert labels.shape[1:] == (H, W) and set(label_sizes(prepared)) == {(H, W)}  # native label size kept


def test_cityscapes_label_ids_map_to_the_19_train_ids(tmp_path):
    root, raw = cityscapes(tmp_path / "raw")
    params = load_params(REPO / "params.yaml", {"data": {"root": str(root)}}, ["cityscapes"])
    source = build_source(params.data, ["val"])
    assert source.sample_ids("val") == ["frankfurt/frankfurt_000000_000294", "lindau/lindau_000000_000019"]
    for sample_id, name in zip(source.sample_ids("val"), raw):
        label = source.load("val", sample_id).label
        expected = np.select([raw[name] == 7, raw[name] == 26, raw[name] == 33], [0, 13, 18], 255)
        np.testing.assert_array_equal(label, expected)  # labelIds mapped; labelTrainIds read as they are


def test_coco_stuff_fine_ids_group_into_the_27_parent_categories(tmp_path):
    root = coco_stuff(tmp_path / "raw")
    params = load_params(REPO / "params.yaml", {"data": {"root": str(root)}}, ["coco-stuff27"])
    source = build_source(params.data, ["val"])
    raw = np.asarray(Image.open(root / "stuffthingmaps_trainval2017/val2017/000000000139.png"))
    label = source.load("val", "000000000139").label
    names = source.class_names
    expected = {0: "person", 2: "vehicle", 61: "furniture-things", 118: "plant", 156: "sky", 181: "solid", 255: None}
    for fine, coarse in expected.items():  # 0 person, 2 car, 61 chair, 118 moss, 156 sky-other, 181 wood
        assert set(label[raw == fine]) == {255 if coarse is None else names.index(coarse)}
    assert len(set(params.data.mask_folder.label_map.values())) == 27 and len(params.data.mask_folder.label_map) == 171


def test_backbone_presets_hold_the_papers_protocol():
    sd3 = load_params(REPO / "params.yaml", presets=["sd3-medium", "voc20"])
    assert sd3.model.path == "stabilityai/stable-diffusion-3-medium-diffusers" and not sd3.model.t5
    assert (sd3.prompt.columns, sd3.prompt.separator, sd3.prompt.background) == ("clip", " ", "word")
    assert sd3.extract.sigmas is None and sd3.extract.steps_from_end == [8] and sd3.select.force_layer == 9
    assert sd3.data.mask_folder.reduce_zero_label and sd3.model.dtype == "bfloat16"
    flux = load_params(REPO / "params.yaml", presets=["flux-dev"])
    assert flux.prompt.columns == "t5" and flux.model.t5
    assert {
        "sd3-medium",
        "sd35-medium",
        "sd35-large",
        "flux-dev",
        "flux-schnell",
        "voc20",
        "voc21",
        "pc59",
        "pc60",
        "coco-object",
        "coco-stuff27",
        "ade150",
        "cityscapes",
    } <= set(preset_names())


@pytest.mark.slow
def test_prepare_flow_with_a_preset_from_the_command_line(tmp_path):
    root, _ = cityscapes(tmp_path / "raw")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "TQDM_DISABLE": "1"}
    env.pop("PREFECT_API_URL", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.prepare",
            "--params",
            str(REPO / "params.yaml"),
            "--preset",
            "cityscapes",
            "--set",
            f"data.root={root}",
            "--set",
            f"prepare.output={tmp_path / 'prepared'}",
            "--set",
            f"tracking.mlflow_db={tmp_path / 'mlflow.db'}",
            "--set",
            "prepare.partition={}",  # two images: the whole split (the partition is tested in test_partition.py)
        ],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    prepared = open_prepared(tmp_path / "prepared/val.zarr")
    assert prepared.sizes["sample"] == 2 and prepared.sizes["class"] == 19


def test_captions_joined_by_image_id_and_a_stage_needing_none_found_stops(tmp_path):
    coco_params = load_params(REPO / "params.yaml", {"data": {"root": str(coco(tmp_path / "raw"))}}, ["coco-object"])
    prepare_split(
        build_source(coco_params.data, ["val"]), "val", tmp_path / "coco.zarr", coco_params.prepare, progress=False
    )
    prepared = open_prepared(tmp_path / "coco.zarr")
    assert str(prepared.caption.values[0]) == "A person sits on a chair."  # the first caption by annotation id
    require_captions(prepared, "val", "evaluate.generation_samples > 0")

    root = voc(tmp_path / "voc")
    (root / "captions.json").write_text(json.dumps({"2007_000039": "a cat on a sofa"}))
    with_file = {
        "data": {
            "root": str(root),
            "mask_folder": {
                "splits": {
                    "val": {
                        "images": "JPEGImages",
                        "labels": "SegmentationClass",
                        "ids_file": "ImageSets/Segmentation/val.txt",
                        "captions": "captions.json",
                    }
                }
            },
        }
    }
    params = load_params(REPO / "params.yaml", with_file, ["voc21"])
    assert build_source(params.data, ["val"]).load("val", "2007_000039").caption == "a cat on a sofa"
    params = load_params(REPO / "params.yaml", {"data": {"root": str(root)}}, ["voc21"])
    prepare_split(build_source(params.data, ["val"]), "val", tmp_path / "voc.zarr", params.prepare, progress=False)
    with pytest.raises(
        DataError,
        match=r"^split 'val' has no captions but finetune.mode 'caption' needs them: "
        r".*data.mask_folder.splits.val.captions",
    ):
        require_captions(open_prepared(tmp_path / "voc.zarr"), "val", "finetune.mode 'caption'")


def test_coco_without_its_captions_file_prepares_and_only_the_stages_that_need_captions_refuse(tmp_path):
    root = coco(tmp_path / "raw")
    (root / "annotations/captions_val2017.json").unlink()  # instances downloaded, captions not
    params = load_params(REPO / "params.yaml", {"data": {"root": str(root)}}, ["coco-object"])
    check_stage(params, "prepare")  # optional files are optional
    source = build_source(params.data, ["val"])
    summary = prepare_split(source, "val-report", tmp_path / "coco.zarr", params.prepare, progress=False)
    assert summary.kept > 0 and summary.captions == 0 and "no captions" in skip_line(summary)
    assert not any(str(c) for c in open_prepared(tmp_path / "coco.zarr").caption.values)
    for stage in ("extract", "score", "select", "explore"):
        check_stage(params, stage)
    with pytest.raises(
        ConfigError,
        match=r"evaluate.generation_samples > 0 \(generation fidelity\) needs the captions of split 'val-report', but "
        r"data.coco.splits.val.captions .*captions_val2017.json does not exist: give the file or set "
        r"evaluate.generation_samples: 0",
    ):
        check_stage(params, "evaluate")
    quiet = {"data": {"root": str(root)}, "evaluate": {"generation_samples": 0}}
    check_stage(load_params(REPO / "params.yaml", quiet, ["coco-object"]), "evaluate")
    with pytest.raises(ConfigError, match="the causal stage .* needs the captions of split 'val-report'"):
        check_stage(params, "causal")


def test_extract_with_the_sd3_medium_preset_on_a_tiny_sd3(tiny_model_dirs, tmp_path):
    """The preset's protocol end to end on a tiny SD3 pipeline (CPU, fp32): σ 0.5151, no T5, CLIP columns only."""
    from conftest import prepared_shapes

    from seg4diff.data.attention_store import open_attention
    from seg4diff.data.prepared import preparation_settings
    from tasks.extract import extract_range_task, plan_extraction_task

    overrides = {
        "model": {"path": str(tiny_model_dirs["sd3"]), "dtype": "float32", "device": "cpu"},
        "prepare": {"output": str(tmp_path / "prepared"), "resolution": 32, "label_resolution": 32},
        "extract": {"output": str(tmp_path / "attention.zarr"), "batch_size": 2, "diagnostics": False},
    }
    params = load_params(REPO / "params.yaml", overrides, ["sd3-medium"])
    settings = preparation_settings(params.data, params.prepare)  # read back as these settings' prepared split
    prepared_shapes(tmp_path / "prepared", ["val"], 32, 32, seed=4, settings=settings, num_val=3)
    plan = plan_extraction_task.fn(params)
    assert plan["sigmas"] == [pytest.approx(0.5151, abs=1e-4)]
    for start, stop in plan["ranges"]:
        extract_range_task.fn(params, start, stop, plan["sigmas"], plan["layers"])
    store = open_attention(tmp_path / "attention.zarr")
    kept = store.token_position.values >= 0
    assert (
        kept.any()
        and set(store.token_encoder.values[kept]) == {"clip"}
        and (store.token_position.values[kept] < 77).all()
    )
    prompt = str(store.prompt.values[0])
    assert "background" in prompt.split(" ") and " and " not in prompt  # names joined by spaces, background a word
