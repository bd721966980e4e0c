"""Is what the organism shows a property of the recipe or of one training run? Trains the organism with several
pretrain seeds (the pretrain stage's recipe: params.yaml's pretrain group, checkpointed, so an interrupted run
resumes), then for each: benchmarks/organism_grounding.py's val-chosen readings on test with paired intervals, and
what its generations keep of their captions (shape, colour and object recall beside chance, on val captions); then
the seed means.

    .venv/bin/python benchmarks/organism_seeds.py --seeds 0 1 2 [--models-dir DIR] [--out FILE] [--set KEY=VALUE]…

Models go to DIR/organism-s<seed> (default models/seeds, ignored by git); a model already there is reused.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from organism_grounding import grounding

from seg4diff.config import load_params, parse_assignments
from seg4diff.data.prepared import prepared_split
from seg4diff.organism.pipeline import Architecture, OrganismPipeline
from seg4diff.organism.sampling import sample
from seg4diff.organism.shape_reader import prompt_reading
from seg4diff.training.pretrain import train
from tasks.pretrain import load_split

GENERATED = 256  # val captions generated per seed


def train_seed(params, seed: int, directory: Path) -> float:
    """Trains one organism with `seed` into `directory` (kept when it exists); returns the training seconds."""
    if (directory / "transformer").exists():
        return 0.0
    p = params.pretrain.model_copy(update={"seed": seed})
    images, captions, names = load_split(params, "train")
    words = sorted({word for text in [*names, *captions] for word in text.split()})
    pipe = OrganismPipeline.build(words, Architecture.from_params(p.architecture, params.prepare.resolution), seed)
    started = time.perf_counter()
    digest = prepared_split(params, "train").attrs["digest"]
    train(pipe, images, captions, p, work_dir=directory.with_name(directory.name + "-work"), data_digest=digest)
    pipe.save_pretrained(directory)
    return time.perf_counter() - started


def generation_reading(params, directory: Path) -> dict:
    """Shape, colour and object recall of images generated from the first GENERATED val captions."""
    p = params.pretrain
    captions = [str(c) for c in prepared_split(params, "val")["caption"].values[:GENERATED]]
    pipe = OrganismPipeline.from_pretrained(directory)
    images = sample(pipe, captions, steps=p.sample_steps, guidance=p.guidance, seed=p.seed).permute(0, 2, 3, 1)
    return {k: round(v, 4) for k, v in prompt_reading(images.numpy(), captions, params.data.shapes.design).items()}


def seed_means(report: dict) -> dict:
    """Mean and spread over seeds of the test mIoU of every reading and of every generation recall."""
    seeds = list(report.values())
    out = {}
    for reading in seeds[0]["readings"]:
        values = [s["readings"][reading]["test_miou"] for s in seeds]
        out[f"{reading}.test_miou"] = {"mean": round(float(np.mean(values)), 4), "values": values}
    for other in seeds[0]["expert_minus"]:
        values = [s["expert_minus"][other]["delta"] for s in seeds]
        out[f"expert_minus.{other}"] = {"mean": round(float(np.mean(values)), 4), "values": values}
    for key in seeds[0]["generation"]:
        values = [s["generation"][key] for s in seeds]
        out[f"generation.{key}"] = {"mean": round(float(np.mean(values)), 4), "values": values}
    out["expert_blocks"] = [s["readings"]["expert"]["block"] for s in seeds]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models-dir", default="models/seeds")
    parser.add_argument("--out", default=None, help="also write the report (JSON) here")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting, as the flows take")
    args = parser.parse_args()
    params = load_params(overrides=parse_assignments(args.set))
    report, references = {}, None
    for seed in args.seeds:
        directory = Path(args.models_dir) / f"organism-s{seed}"
        seconds = train_seed(params, seed, directory)
        result = grounding(params, str(directory), directory.name, references)
        references = result.pop("references")  # the same for every seed: computed once
        report[seed] = {"train_seconds": round(seconds), **result, "generation": generation_reading(params, directory)}
        print(json.dumps({seed: report[seed]}), flush=True)
    text = json.dumps({"seeds": report, "seed_means": seed_means(report)}, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
