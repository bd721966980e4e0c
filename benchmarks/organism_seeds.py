"""Is the organism's expert block a property of the recipe or of one training run? Trains the organism with several
pretrain seeds (same recipe as the pretrain stage: params.yaml's pretrain group), then for each, by
benchmarks/organism_grounding.py's protocol: the block and σ chosen on val and their test mIoU with a 95% interval,
the per-block test curve, every block's maps averaged, and paired differences to the baselines. Offline: 1,928–1,982 s
of training per seed on the idle 2-core CPU.

    .venv/bin/python benchmarks/organism_seeds.py --seeds 0 1 2     # models under /tmp/seg4diff-organism-seed<N>
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from organism_grounding import baseline_stats, grounding

from seg4diff.config import load_params
from seg4diff.organism.pipeline import Architecture, OrganismPipeline
from seg4diff.training.pretrain import train
from tasks.pretrain import load_split


def train_seed(params, seed: int, directory: Path) -> float:
    """Trains one organism with `seed` into `directory` (kept when it exists); returns the training seconds."""
    if (directory / "transformer").exists():
        return 0.0
    p = params.pretrain
    images, captions, names = load_split(params, "train")
    words = sorted({word for text in [*names, *captions] for word in text.split()})
    pipe = OrganismPipeline.build(words, Architecture.from_params(p.architecture, params.prepare.resolution), seed)
    started = time.perf_counter()
    train(pipe, images, captions, p.model_copy(update={"seed": seed}), progress=False)
    pipe.save_pretrained(directory)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    params = load_params()
    baselines = baseline_stats(params)
    report = {}
    for seed in args.seeds:
        shipped = seed == params.pretrain.seed  # the pretrain stage's own model: same recipe, already trained
        directory = Path(params.pretrain.output if shipped else f"/tmp/seg4diff-organism-seed{seed}")
        seconds = train_seed(params, seed, directory)
        result = grounding(params, str(directory), f"seed{seed}", baselines)["class phrase"]
        report[seed] = {"train_seconds": round(seconds), **result}
        print(json.dumps({seed: report[seed]}), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
