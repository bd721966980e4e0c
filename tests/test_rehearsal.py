"""The real-backbone path rehearsed: the commands of docs/presets.md, run as written through every stage they name.

Each command is read from the rehearsed block of docs/presets.md and run in a fresh process, with only what a CPU
and a tiny model need added: the dataset replica (`data.root`), a tiny pipeline of the backbone's real diffusers
classes (`model.path`), CPU and float32, a 32-pixel working size and sample counts a test can afford — nothing
that changes what the stages do. Every run must end with metrics/evaluate.json; the COCO runs train MAGNET on the
train2017 replica and evaluate base against fine-tuned.
"""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from seg4diff.data.partition import part_of

DOC = REPO / "docs" / "presets.md"
MARKER = "<!-- rehearsed by tests/test_rehearsal.py -->"
TINY = {"sd3-medium": "sd3", "sd35-medium": "sd35", "flux-schnell": "flux"}  # backbone preset → tiny pipeline
BLOCKS = {"sd3-medium": ["select.force_layer=1"]}  # the tiny SD3 has 3 blocks, not SD3-medium's 24
CPU = [  # what a CPU and a tiny model need, and nothing else
    "model.device=cpu",
    "model.dtype=float32",
    "prepare.resolution=32",
    "orchestration.local_workers=0",
    "extract.batch_size=2",
    "score.bootstrap_resamples=50",
    "causal.captions=2",
    "causal.calibration_samples=2",
    "causal.flow_samples=2",
    "causal.generation_steps=2",
    "causal.batch_size=2",
    "causal.permutations=1",
    "causal.bootstrap_resamples=100",
    "explore.samples=2",
    "finetune.steps=2",
    "finetune.batch_size=2",
    "finetune.warmup_steps=1",
    "finetune.checkpoint_every=2",
    "finetune.validate_every=2",
    "finetune.validation_samples=2",
    "evaluate.batch_size=2",
    "evaluate.val_samples=4",
    "evaluate.generation_steps=2",
    "evaluate.bootstrap_resamples=100",
]
H, W = 24, 32


def rehearsed_commands() -> list[str]:
    """The commands of docs/presets.md's rehearsed block, as a user copies them."""
    text = DOC.read_text()
    block = text[text.index(MARKER) :].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.startswith("python -m flows.pipeline")]


def _photo(path: Path, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)


def _ids(count: int, select: int, start: int) -> list[int]:
    """`count` image ids from `start` on, at least `select` of them in the 20% selection part."""
    chosen, picked = [], 0
    for image_id in range(start, start + 10_000):
        in_select = part_of(str(image_id), 0.2) == "select"
        if in_select and picked < select or not in_select and len(chosen) - picked < count - select:
            chosen.append(image_id)
            picked += in_select
        if len(chosen) == count:
            return chosen
    raise AssertionError("not enough ids")


def coco_replica(root: Path) -> Path:
    """COCO as distributed: train2017 and val2017 images, instances and captions files, two categories."""
    rng = np.random.default_rng(0)
    (root / "annotations").mkdir(parents=True)
    for split, ids in {"train2017": _ids(6, 0, 1), "val2017": _ids(8, 3, 500)}.items():
        images, annotations, captions = [], [], []
        for k, image_id in enumerate(ids):
            name = f"{image_id:012d}.jpg"
            _photo(root / split / name, rng)
            images.append({"id": image_id, "file_name": name, "height": H, "width": W})
            for category, box in ((1, [2, 2, 14, 2, 14, 20, 2, 20]), (62, [18, 4, 30, 4, 30, 16, 18, 16])):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": category,
                        "iscrowd": 0,
                        "area": 144.0,
                        "segmentation": [box],
                        "bbox": [box[0], box[1], 12, 12],
                    }
                )
            captions.append({"id": k + 1, "image_id": image_id, "caption": "a photo of a person and a chair"})
        categories = [{"id": 1, "name": "person"}, {"id": 62, "name": "chair"}]
        instances = {"images": images, "annotations": annotations, "categories": categories}
        (root / f"annotations/instances_{split}.json").write_text(json.dumps(instances))
        (root / f"annotations/captions_{split}.json").write_text(json.dumps({"annotations": captions}))
    return root


def voc_replica(root: Path) -> Path:
    """VOCdevkit/VOC2012 as distributed: JPEGImages, SegmentationClass (palette PNGs), the val ids file."""
    rng = np.random.default_rng(1)
    names = [f"2007_{image_id:06d}" for image_id in range(1, 400)]
    names = [n for n in names if part_of(n, 0.2) == "select"][:3] + [n for n in names if part_of(n, 0.2) == "report"][
        :5
    ]
    for name in names:
        _photo(root / "JPEGImages" / f"{name}.jpg", rng)
        label = np.zeros((H, W), np.uint8)
        label[2:14, 2:16], label[10:22, 18:30], label[0, :] = 15, 9, 255  # person, chair, a void rim
        (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        Image.fromarray(label, mode="L").convert("P").save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/val.txt").write_text("".join(f"{n}\n" for n in names))
    return root


REPLICAS = {"voc20": voc_replica, "coco-object": coco_replica}


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """One local Prefect server for every rehearsal (each command would otherwise start its own), as a user's
    `prefect server start` serves theirs: the commands find it in PREFECT_API_URL."""
    from flows.server import prefect_api

    home = tmp_path_factory.mktemp("prefect")
    previous = os.environ.get("PREFECT_HOME")
    os.environ["PREFECT_HOME"] = str(home)
    try:
        with prefect_api() as api:
            yield api, home
    finally:
        os.environ.pop("PREFECT_HOME") if previous is None else os.environ.update(PREFECT_HOME=previous)


def test_the_documented_commands_cover_every_backbone_family_with_every_stage():
    commands = [shlex.split(c) for c in rehearsed_commands()]
    presets = [[c[i + 1] for i, word in enumerate(c) if word == "--preset"] for c in commands]
    assert {p[0] for p in presets} == set(TINY)  # SD3, SD3.5 and FLUX
    every_stage = [p[0] for p, c in zip(presets, commands) if "--stages" not in c]
    assert sorted(every_stage) == sorted(TINY)  # one command per family runs every stage (MAGNET included)
    assert all(p[1] in REPLICAS for p in presets)


@pytest.mark.slow
@pytest.mark.parametrize("command", rehearsed_commands(), ids=lambda c: "+".join(re.findall(r"--preset (\S+)", c)))
def test_a_documented_command_runs_every_stage_it_names_to_metrics(command, tiny_model_dirs, prefect_server, tmp_path):
    words = shlex.split(command)
    backbone, dataset = (words[i + 1] for i, word in enumerate(words) if word == "--preset")
    root = REPLICAS[dataset](tmp_path / "raw")
    words = [f"data.root={root}" if w.startswith("data.root=") else w for w in words]
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text((REPO / "params.yaml").read_text())
    added = [f"model.path={tiny_model_dirs[TINY[backbone]]}", *CPU, *BLOCKS.get(backbone, [])]
    added.append(f"tracking.mlflow_db={tmp_path / 'mlflow.db'}")
    argv = [sys.executable, *words[1:], "--params", str(work / "params.yaml")]
    argv += [part for setting in added for part in ("--set", setting)]
    api, home = prefect_server
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(home), "PYTHONPATH": str(REPO)}
    done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    (tmp_path / "pipeline.log").write_text(output)
    errors = [line for line in output.splitlines() if "Error:" in line or "error:" in line]
    assert done.returncode == 0, "\n".join(errors[:20]) or output[-4000:]
    if "--stages" not in words:
        assert "stage pretrain skipped" in output  # a real backbone is never pretrained
    metrics = json.loads((work / "metrics/evaluate.json").read_text())
    protocol = metrics["protocol"]  # choices made on the selection part, numbers from the report part
    assert protocol["expert_chosen_on"]["split"] == protocol["reading_chosen_on"]["split"] == "val-select"
    assert protocol["reported_on"] == {"split": "val-report", "images": 5}
    assert 0 <= metrics["base"]["gt_classes"]["miou"] <= 1
    if "--stages" not in words:  # every stage: MAGNET trained on the train split and evaluated against the base
        assert "finetuned_vs_base" in metrics and 0 <= metrics["finetuned"]["gt_classes"]["miou"] <= 1
        finetune = json.loads((work / "metrics/finetune.json").read_text())
        assert finetune["protocol"]["trained_on"] == {"split": "train", "images": 6}
        assert finetune["protocol"]["checkpoint_chosen_on"]["split"] == "val-select"
        assert (work / "results/causal.csv").is_file()
