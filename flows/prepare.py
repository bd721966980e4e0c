"""Stage `prepare`: dataset source → prepared zarr stores per split, a summary in MLflow and as a Prefect artifact."""
from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.cli import main
from flows.tracking import stage_run
from seg4diff.config import load_params
from seg4diff.data.prepare import build_source, summary_markdown
from seg4diff.reporting.outputs import write_json
from tasks.prepare import generate_shapes_task, prepare_split_task

METRICS = Path("metrics/prepare.json")


@flow(name="prepare")
def prepare(params_path: str = "params.yaml", presets: list[str] | None = None, overrides: dict | None = None) -> dict:
    """Prepares every configured split; returns {split: summary dict}."""
    params = load_params(params_path, overrides, presets or ())
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
    write_json(METRICS, {s: {"kept": r["kept"], "skipped": sum(r["skipped"].values())} for s, r in report.items()})
    return report


if __name__ == "__main__":
    main("prepare", prepare)
