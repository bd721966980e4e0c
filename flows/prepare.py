"""Stage `prepare`: dataset source → prepared zarr stores per split, a summary in MLflow and as a Prefect artifact."""

from __future__ import annotations

import mlflow
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.cli import main
from flows.stages import Outcome, stage_flow
from seg4diff.config import Params
from seg4diff.data.prepare import build_source, skip_line, summary_markdown
from tasks.prepare import generate_shapes_task, prepare_split_task, publish_splits_task


@stage_flow("prepare")
def prepare(params: Params, run) -> Outcome:
    """Prepares every configured split (or its parts, where prepare.partition divides it); returns {name: summary}."""
    if params.data.source == "shapes":
        generate_shapes_task(params)
    summaries = [prepare_split_task(params, split) for split in params.prepare.prepared]
    publish_splits_task(params)
    logger = get_run_logger()
    for s in summaries:  # in the terminal, not only in the artifact: a skipped sample is never silent
        (logger.warning if s.skipped else logger.info)(skip_line(s))
    names = build_source(params.data, params.prepare.splits).class_names
    report = {s.split: s.as_dict(names) for s in summaries}
    for s in summaries:
        mlflow.log_metrics({f"{s.split}.kept": s.kept, f"{s.split}.skipped": sum(s.skipped.values())})
    markdown = summary_markdown(summaries, names)
    mlflow.log_text(markdown, "prepare_summary.md")
    mlflow.log_dict(report, "prepare_summary.json")
    create_markdown_artifact(
        key="prepare-summary",
        markdown=f"# Prepared dataset ({params.data.source})\n\n{markdown}",
        description="Samples kept and skipped per split; class frequencies",
    )
    return Outcome(report, {s: {"kept": r["kept"], "skipped": sum(r["skipped"].values())} for s, r in report.items()})


if __name__ == "__main__":
    main("prepare", prepare)
