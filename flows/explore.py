"""Stage `explore`: the attention explorer, one self-contained HTML page, logged to MLflow and linked from Prefect."""

from __future__ import annotations

import mlflow
from prefect.artifacts import create_markdown_artifact

from flows.cli import main
from flows.stages import stage_flow
from seg4diff.config import Params
from tasks.explore import build_explorer_task


@stage_flow("explore")
def explore(params: Params, run) -> dict:
    """Writes explore.output; returns its size and contents."""
    page = build_explorer_task(params)
    mlflow.log_artifact(page["path"])
    mlflow.log_metrics({"explorer_megabytes": page["megabytes"], "explorer_samples": page["samples"]})
    uri = f"{run.info.artifact_uri}/{page['path'].rsplit('/', 1)[-1]}"
    create_markdown_artifact(
        key="attention-explorer",
        markdown=(
            f"# Attention explorer\n\n[{page['path']}]({page['path']}) — open it in a browser (works offline, from "
            "disk).\n\n"
            f"MLflow copy: `{uri}` (run `{run.info.run_id}`, artifact `explorer.html`).\n\n"
            f"| samples | layers | heads (with the mean) | σ | size |\n|---:|---:|---:|---:|---:|\n"
            f"| {page['samples']} | {page['layers']} | {page['heads']} | {page['sigmas']} | {page['megabytes']:.2f} MB "
            "|"
        ),
        description="Self-contained page: attention by sample, layer, head, σ and word",
    )
    return page


if __name__ == "__main__":
    main("explore", explore)
