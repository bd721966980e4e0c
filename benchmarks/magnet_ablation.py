"""MAGNET over several fine-tuning seeds, and whether its gain comes from the mask losses. For each seed, trains the
adapter from params.yaml's finetune group (`magnet`), with --variants flow_only with λ_focal = λ_dice = 0 (LoRA +
flow loss only), with --variants predictor with `mask_loss: predictor` (the cross-entropy of the scored decision);
then on the TEST split at the expert block (chosen on val by the pipeline): zero-shot mIoU with GT-class prompts, the
held-out flow-matching loss and (organism) the shape and colour recall and caption colour agreement of 256 generated
images — each model read by its predictor chosen on val (evaluate.predictors) — each adapter minus the base model
paired over the same test images / captions, with 95% bootstrap intervals (10,000 resamples); over seeds the mean ±
sd of the gain, and the interval of the seed-mean gain (images resampled, seeds fixed). With magnet and flow_only,
MAGNET − flow-only per seed and for the seed means, paired the same way.

    .venv/bin/python benchmarks/magnet_ablation.py --seeds 0 1 2 [--variants magnet flow_only predictor] [--reuse-seed0
    models/lora]
        [--steps N]        # train N steps instead of finetune.steps
        [--measure-only]   # measure the adapters an earlier run left in /tmp/seg4diff-magnet-<variant>-<seed>/best
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from seg4diff.backbones.backbone import load_backbone
from seg4diff.config import load_params, parse_assignments
from seg4diff.data.prepared import open_prepared, open_split
from seg4diff.evaluation.causal import generation_scores
from seg4diff.evaluation.fidelity import generate
from seg4diff.evaluation.flow_loss import flow_losses
from seg4diff.evaluation.metrics import miou_of
from seg4diff.evaluation.protocols import image_statistics
from seg4diff.evaluation.statistics import paired_mean_difference, paired_miou_difference, resample_weights
from seg4diff.prompts import prompt_style
from seg4diff.segmentation.zero_shot import Readout, choose_predictor, segment_batch
from seg4diff.training.magnet import train_magnet
from tasks.finetune import magnet_config

RESAMPLES = 10_000
GENERATED = 256  # test captions generated per model
READ = ("shape_recall", "colour_recall", "caption_colour_agreement")  # what generated images keep of the caption


def measure(params, lora: Path | None, expert: dict) -> dict:
    """Per test image class statistics (with the predictor chosen on val) and flow loss, per caption colour
    agreement."""
    backbone = load_backbone(params.model, lora=lora)
    test = open_split(params.prepare.output, "test")
    style = prompt_style(params.prompt, "gt_classes")
    readout = Readout.for_expert(expert, params.prompt, params.evaluate.seed)
    predictor, by_predictor = choose_predictor(
        backbone,
        open_split(params.prepare.output, params.evaluate.val_split),
        readout,
        16,
        params.evaluate.predictors,
        params.evaluate.val_samples,
    )
    readout = replace(readout, predictor=predictor)
    stats = []
    for start in range(0, test.sizes["sample"], 16):
        indices = list(range(start, min(start + 16, test.sizes["sample"])))
        rows = test.isel(sample=indices).load()
        predictions = segment_batch(backbone, rows, indices, readout)
        stats.append(image_statistics(predictions, rows["label"].values, test.sizes["class"]))
    captions = [str(c) for c in test.caption.values[:GENERATED]]
    images = generate(
        backbone,
        captions,
        params.evaluate.generation_steps,
        params.evaluate.guidance,
        params.evaluate.seed,
        test.sizes["y"],
    )
    reading = generation_scores(images, captions, None, True, params.data.shapes.design)
    return {
        "stats": np.concatenate(stats),
        "flow": flow_losses(backbone, test, params.evaluate.seed, test.sizes["sample"], style),
        "reading": {metric: reading[metric] for metric in READ},
        "predictor": predictor,
        "val_miou_by_predictor": by_predictor,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["magnet"], choices=["magnet", "flow_only", "predictor"])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: finetune.steps)")
    parser.add_argument(
        "--reuse-seed0", default=None, help="an adapter already trained with these params and seed 0 (models/lora)"
    )
    parser.add_argument(
        "--measure-only", action="store_true", help="no training: measure the adapters an earlier run saved"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting, as the flows take")
    args = parser.parse_args()
    params = load_params(overrides=parse_assignments(args.set))
    expert = json.loads(Path(params.select.output).read_text())
    prepared = Path(params.prepare.output)
    base = measure(params, None, expert)
    updates = {
        "magnet": {},
        "flow_only": {"lambda_focal": 0.0, "lambda_dice": 0.0},
        "predictor": {"mask_loss": "predictor"},
    }
    steps = {"steps": args.steps} if args.steps else {}
    stats = {}
    report = {
        "expert": expert["layer"],
        "sigma": expert["sigma"],
        "base_test_miou": float(miou_of(base["stats"].sum(0))),
        "base_predictor": base["predictor"],
        "base_val_miou_by_predictor": base["val_miou_by_predictor"],
        "runs": {},
    }
    for variant in args.variants:
        gains, runs = [], {}
        for seed in args.seeds:
            config = magnet_config(params, expert)
            config = dataclasses.replace(
                config, finetune=config.finetune.model_copy(update={**updates[variant], **steps, "seed": seed})
            )
            started = time.perf_counter()
            work = Path(f"/tmp/seg4diff-magnet-{variant}-{seed}")
            if seed == 0 and variant == "magnet" and args.reuse_seed0:
                adapter, trained = Path(args.reuse_seed0), "reused"
            elif args.measure_only:
                adapter, trained = work / "best", "earlier run"
            else:
                train_magnet(
                    load_backbone(params.model),
                    open_prepared(prepared / "train.zarr"),
                    open_prepared(prepared / "val.zarr"),
                    config,
                    work,
                    progress=False,
                )
                adapter, trained = work / "best", round(time.perf_counter() - started)
            tuned = measure(params, adapter, expert)
            miou = paired_miou_difference(base["stats"], tuned["stats"], RESAMPLES)
            relative = (tuned["flow"] - base["flow"]) / base["flow"]
            flow = paired_mean_difference(np.zeros(len(base["flow"])), relative, RESAMPLES)
            reading = {m: paired_mean_difference(base["reading"][m], tuned["reading"][m], RESAMPLES) for m in READ}
            runs[seed] = {
                "test_miou": miou["b"],
                "gain_points": 100 * miou["delta"],
                "gain_ci": [100 * miou["ci_low"], 100 * miou["ci_high"]],
                "flow_loss_change_%": 100 * flow["delta"],
                "flow_ci": [100 * flow["ci_low"], 100 * flow["ci_high"]],
                **{
                    f"{m}.{key}": value
                    for m, d in reading.items()
                    for key, value in (("value", d["b"]), ("change", d["delta"]), ("ci", [d["ci_low"], d["ci_high"]]))
                },
                "predictor": tuned["predictor"],
                "val_miou_by_predictor": tuned["val_miou_by_predictor"],
                "train_seconds": trained,
            }
            gains.append(tuned["stats"])
            stats[variant, seed] = tuned["stats"]
            print(json.dumps({variant: {seed: runs[seed]}}), flush=True)
        weights = resample_weights(len(base["stats"]), RESAMPLES, 0)  # the same resampled images for every seed
        flat = lambda s: (weights @ s.reshape(len(s), -1)).reshape(-1, *s.shape[1:])  # noqa: E731
        base_draws = miou_of(flat(base["stats"]))
        mean_gain = np.mean([miou_of(flat(s)) - base_draws for s in gains], axis=0)
        points = [r["gain_points"] for r in runs.values()]
        report["runs"][variant] = {
            "per_seed": runs,
            "gain_mean_points": float(np.mean(points)),
            "gain_sd_points": float(np.std(points, ddof=1)) if len(points) > 1 else None,
            "seed_mean_gain_ci_points": [
                100 * float(np.quantile(mean_gain, 0.025)),
                100 * float(np.quantile(mean_gain, 0.975)),
            ],
        }
    if {"magnet", "flow_only"} <= set(args.variants):
        report["magnet_minus_flow_only"] = mask_terms_effect(stats, args.seeds)
    print(json.dumps(report, indent=2))


def mask_terms_effect(stats: dict, seeds: list[int]) -> dict:
    """MAGNET − flow-only LoRA in mIoU points: per seed paired over the same resampled test images, and the seed
    means."""
    per_seed = {}
    for seed in seeds:
        d = paired_miou_difference(stats["flow_only", seed], stats["magnet", seed], RESAMPLES)
        per_seed[seed] = {"points": 100 * d["delta"], "ci": [100 * d["ci_low"], 100 * d["ci_high"]]}
    n = len(stats["magnet", seeds[0]])
    weights = resample_weights(n, RESAMPLES, 0)
    draws = lambda s: miou_of((weights @ s.reshape(n, -1)).reshape(-1, *s.shape[1:]))  # noqa: E731
    mean = np.mean([draws(stats["magnet", s]) - draws(stats["flow_only", s]) for s in seeds], axis=0)
    return {
        "per_seed": per_seed,
        "seed_mean_points": float(np.mean([r["points"] for r in per_seed.values()])),
        "seed_mean_ci_points": [100 * float(np.quantile(mean, 0.025)), 100 * float(np.quantile(mean, 0.975))],
    }


if __name__ == "__main__":
    main()
