"""Ablation: does MAGNET's gain come from the mask losses? Trains the adapter twice from params.yaml's finetune
group — as configured, and with λ_focal = λ_dice = 0 (LoRA + flow loss only) — then reports, on the TEST split at the
expert block, zero-shot mIoU (GT-class prompts) and the held-out flow-matching loss of base, MAGNET and ablation.

    .venv/bin/python benchmarks/magnet_ablation.py      # after `dvc repro select`; work dirs under /tmp
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from seg4diff.config import load_params
from seg4diff.data.prepared import open_prepared
from seg4diff.extract import prompt_style
from seg4diff.finetune import heldout_flow_loss, train_magnet
from seg4diff.metrics import summarize
from seg4diff.models import load_backbone
from seg4diff.segment import segmentation_confusion
from tasks.finetune import magnet_config


def test_numbers(params, lora: Path | None, expert: dict) -> dict:
    backbone = load_backbone(params.model, lora=lora)
    test = open_prepared(Path(params.prepare.output) / "test.zarr")
    style = prompt_style(params.prompt, "gt_classes")
    confusion = segmentation_confusion(backbone, test, expert["layer"], expert["timestep"], params.evaluate.seed, 16, style,
                                       params.prompt.threshold)
    return {"test_miou": summarize(confusion)["miou"],
            "test_flow_loss": heldout_flow_loss(backbone, test, params.evaluate.seed, test.sizes["sample"], style=style)}


def main() -> None:
    params = load_params()
    expert = json.loads(Path(params.select.output).read_text())
    prepared = Path(params.prepare.output)
    rows = {"base": test_numbers(params, None, expert)}
    for name, update in (("magnet", {}), ("flow_only", {"lambda_focal": 0.0, "lambda_dice": 0.0})):
        config = dataclasses.replace(magnet_config(params, expert), **update)
        work = Path(f"/tmp/seg4diff-ablation-{name}")
        started = time.perf_counter()
        summary = train_magnet(load_backbone(params.model), open_prepared(prepared / "train.zarr"),
                               open_prepared(prepared / "val.zarr"), config, work, progress=False)
        rows[name] = {**test_numbers(params, work / "best", expert), "best_step": summary["best"]["step"],
                      "train_seconds": round(time.perf_counter() - started)}
    base = rows["base"]
    print(f"block {expert['layer']}, σ={expert['timestep']:g}, test split")
    print(f"{'model':<10}{'test mIoU':>10}{'Δ points':>10}{'flow loss':>11}{'Δ flow %':>10}{'best step':>10}")
    for name, row in rows.items():
        print(f"{name:<10}{row['test_miou']:>10.4f}{100 * (row['test_miou'] - base['test_miou']):>10.2f}"
              f"{row['test_flow_loss']:>11.5f}{100 * (row['test_flow_loss'] / base['test_flow_loss'] - 1):>10.2f}"
              f"{row.get('best_step', '-'):>10}")


if __name__ == "__main__":
    main()
