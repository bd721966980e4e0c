"""Stage `prepare`: dataset source → prepared zarr stores per split, a summary in MLflow and as a Prefect artifact."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from seg4diff.config import load_params
from seg4diff.data.prepare import build_source, summary_markdown
from seg4diff.tracking import stage_run
from tasks.prepare import generate_shapes_task, prepare_split_task

METRICS = Path("metrics/prepare.json")


@flow(name="prepare")
def prepare(params_path: str = "params.yaml", overrides: dict | None = None) -> dict:
    """Prepares every configured split; returns {split: summary dict}."""
    params = load_params(params_path, overrides)
    with stage_run("prepare", params, ("data", "prepare")):
        if params.data.source == "shapes":
            generate_shapes_task(params)
        summaries = [prepare_split_task(params, split) for split in params.prepare.splits]
        names = build_source(params.data, params.prepare.splits).class_names
        report = {s.split: s.as_dict(names) for s in summaries}
        for s in summaries:
            mlflow.log_metrics({f"{s.split}.kept": s.kept, f"{s.split}.skipped": sum(s.skipped.values())})
        markdown = summary_markdown(summaries, names)
        mlflow.log_text(markdown, "prepare_summary.md")
        mlflow.log_dict(report, "prepare_summary.json")
        create_markdown_artifact(key="prepare-summary", markdown=f"# Prepared dataset ({params.data.source})\n\n{markdown}",
                                 description="Samples kept and skipped per split; class frequencies")
    METRICS.parent.mkdir(exist_ok=True)
    METRICS.write_text(json.dumps({s: {"kept": r["kept"], "skipped": sum(r["skipped"].values())} for s, r in report.items()}, indent=2))
    return report


if __name__ == "__main__":
    prepare()
