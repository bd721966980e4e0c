"""Tasks of the prepare stage: generate Shapes when it is the source, then write one prepared store per split."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from seg4diff.config import Params
from seg4diff.data.prepare import SplitSummary, build_source, prepare_split
from seg4diff.data.prepared import preparation_settings, publish, split_path
from seg4diff.data.shapes import generate_shapes


@task(name="generate-shapes")
def generate_shapes_task(params: Params) -> None:
    """Writes the Shapes dataset in COCO format under data.root (deterministic from data.shapes.seed)."""
    generate_shapes(Path(params.data.root), params.data.shapes, params.prepare.splits)


@task(name="prepare-split", task_run_name="prepare-{split}")
def prepare_split_task(params: Params, split: str) -> SplitSummary:
    """Writes <prepare.output>/<split>.zarr.tmp (published by publish_splits_task) and returns its summary."""
    source = build_source(params.data, params.prepare.splits)
    return prepare_split(
        source,
        split,
        split_path(params.prepare.output, split),
        params.prepare,
        settings=preparation_settings(params.data, params.prepare),
        publish_now=False,
    )


@task(name="publish-splits")
def publish_splits_task(params: Params) -> None:
    """Moves every finished split into place, only once all are written: never splits of two runs side by side."""
    for split in params.prepare.prepared:
        publish(split_path(params.prepare.output, split))
