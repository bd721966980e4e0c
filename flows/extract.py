"""Stage `extract`: joint attention of every prepared sample at the configured sigmas into data/attention.zarr."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from prefect.artifacts import create_markdown_artifact

from flows.cli import main
from flows.runners import gpu_request
from flows.stages import Outcome, stage_flow
from seg4diff.config import Params
from tasks.extract import extract_range_task, plan_extraction_task


def _size_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@stage_flow("extract")
def extract(params: Params, run) -> Outcome:
    """Fills the attention store (resuming an interrupted run); returns counts, throughput and size."""
    plan = plan_extraction_task(params)
    with gpu_request(params):
        futures = [
            extract_range_task.submit(params, start, stop, plan["sigmas"], plan["layers"])
            for start, stop in plan["ranges"]
        ]
    results = [future.result() for future in futures]
    computed = sum(r["computed"] for r in results)
    seconds = max((r["seconds"] for r in results), default=0.0)
    summary = {
        "samples": plan["samples"],
        "computed": computed,
        "resumed_from": plan["already_complete"],
        "repaired": plan["damaged"],
        "samples_per_second": computed / seconds if seconds else 0.0,
        "store_mb": _size_bytes(Path(params.extract.output)) / 2**20,
    }
    mlflow.log_metrics(summary)
    mlflow.log_params({"extract.sigmas_resolved": json.dumps(plan["sigmas"])})
    mlflow.log_metrics({f"storage_{k}": v for k, v in plan["storage"].items()})
    create_markdown_artifact(
        key="extract-summary",
        markdown="# Attention extraction\n\n| | |\n|---|---:|\n"
        + "\n".join(f"| {k} | {v:.4g} |" for k, v in summary.items())
        + f"\n| sigmas | {plan['sigmas']} |"
        + "".join(f"\n| planned {k} | {v:.4g} |" for k, v in plan["storage"].items()),
    )
    return Outcome(summary, {"samples": plan["samples"], "store_mb": round(summary["store_mb"], 2)})


if __name__ == "__main__":
    main("extract", extract)
