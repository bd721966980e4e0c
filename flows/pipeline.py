"""The `seg4diff` pipeline flow: prepare → pretrain → extract → score → select → finetune → evaluate.

Skipping uses ONE mechanism, DVC's: a stage whose dvc.lock entry still matches its params, code and inputs is
skipped (`dvc status`), and a stage that ran is recorded with `dvc commit`, so `dvc repro` and Prefect runs agree.
Runs with `overrides` (params not in params.yaml) or `force` always run and leave dvc.lock alone.
"""
from __future__ import annotations

import os
from pathlib import Path

import mlflow
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.evaluate import evaluate
from flows.extract import extract
from flows.finetune import finetune
from flows.prepare import prepare
from flows.pretrain import pretrain
from flows.runners import shard_runner
from flows.score import score
from flows.select import select
from seg4diff.config import load_params
from seg4diff.tracking import configure, git_commit, params_hash

STAGES = ("prepare", "pretrain", "extract", "score", "select", "finetune", "evaluate")
SHARDED = {"extract", "evaluate"}
FLOWS = {"prepare": prepare, "pretrain": pretrain, "extract": extract, "score": score, "select": select,
         "finetune": finetune, "evaluate": evaluate}


def dvc_up_to_date(root: Path, stage: str) -> bool:
    """True when DVC has a lock entry for `stage` that matches its current params, code and inputs."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return not repo.status(targets=[stage], with_deps=False)


def dvc_record(root: Path, stage: str) -> None:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        repo.commit(stage, force=True)


@flow(name="seg4diff")
def pipeline(params_path: str = "params.yaml", overrides: dict | None = None, stages: list[str] | None = None,
             force: bool = False) -> dict:
    """Runs the stages in order (all by default) in the directory of `params_path`; returns what each stage did."""
    root = Path(params_path).resolve().parent
    os.chdir(root)  # stage outputs are relative to the params file, as under `dvc repro`
    params = load_params(Path(params_path).name, overrides)  # validated once, before any stage runs
    chosen = list(STAGES) if stages is None else [s for s in STAGES if s in stages]
    unknown = set(stages or []) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; the stages are {STAGES}")
    use_dvc = (root / "dvc.yaml").exists() and not overrides and not force
    logger = get_run_logger()
    report = {}
    configure(params.tracking)
    with mlflow.start_run(run_name="pipeline", tags={"git_commit": git_commit(root), "params_hash": params_hash(params)}):
        for stage in chosen:
            if use_dvc and dvc_up_to_date(root, stage):
                logger.info("stage %s is up to date (dvc status): skipped", stage)
                report[stage] = "skipped (up to date)"
                continue
            stage_flow = FLOWS[stage].with_options(task_runner=shard_runner(params)) if stage in SHARDED else FLOWS[stage]
            try:
                stage_flow(params_path=Path(params_path).name, overrides=overrides)
            except Exception as error:
                raise RuntimeError(f"stage '{stage}' failed: {error}") from error
            if use_dvc:
                dvc_record(root, stage)
            report[stage] = "ran"
        create_markdown_artifact(key="pipeline-run", markdown="# seg4diff pipeline\n\n| stage | |\n|---|---|\n"
                                 + "\n".join(f"| {s} | {r} |" for s, r in report.items()))
    return report


if __name__ == "__main__":
    pipeline()
