"""Stage `explore`: the attention explorer, one self-contained HTML page, logged to MLflow and linked from Prefect."""
from __future__ import annotations

import mlflow
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.cli import main
from flows.tracking import stage_run
from seg4diff.config import load_params
from tasks.explore import build_explorer_task


@flow(name="explore")
def explore(params_path: str = "params.yaml", presets: list[str] | None = None, overrides: dict | None = None) -> dict:
    """Writes explore.output; returns its size and contents."""
    params = load_params(params_path, overrides, presets or ())
    with stage_run("explore", params, ("explore",)) as run:
        page = build_explorer_task(params)
        mlflow.log_artifact(page["path"])
        mlflow.log_metrics({"explorer_megabytes": page["megabytes"], "explorer_samples": page["samples"]})
        uri = f"{run.info.artifact_uri}/{page['path'].rsplit('/', 1)[-1]}"
        create_markdown_artifact(key="attention-explorer", markdown=(
            f"# Attention explorer\n\n[{page['path']}]({page['path']}) — open it in a browser (works offline, from disk).\n\n"
            f"MLflow copy: `{uri}` (run `{run.info.run_id}`, artifact `explorer.html`).\n\n"
            f"| samples | layers | heads (with the mean) | σ | size |\n|---:|---:|---:|---:|---:|\n"
            f"| {page['samples']} | {page['layers']} | {page['heads']} | {page['sigmas']} | {page['megabytes']:.2f} MB |"),
            description="Self-contained page: attention by sample, layer, head, σ and word")
    return page


if __name__ == "__main__":
    main("explore", explore)
