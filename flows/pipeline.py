"""The `seg4diff` pipeline flow: prepare → pretrain → extract → score → select → causal → finetune → evaluate →
readouts → explore.

Skipping uses ONE mechanism, DVC's: a stage whose dvc.lock entry still matches its params, code and inputs is
skipped (`dvc status`), and a stage that ran is recorded with `dvc commit`, so `dvc repro` and Prefect runs agree.
A skipped stage still gets its MLflow run, built from what dvc.yaml says it produced (metrics files, small outputs),
tagged `reused`. Runs with presets or overrides (params not in params.yaml) or `force` always run every chosen
stage and leave dvc.lock alone.

    python -m flows.pipeline [--stages extract score] [--force] [--preset NAME] [--set KEY=VALUE]
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.cli import main
from flows.runners import for_stage
from flows.stages import REGISTRY, STAGES
from flows.tracking import configure, git_commit, log_reused_stage, params_hash
from seg4diff.config import check_stage, load_params
from seg4diff.errors import ConfigError


def dvc_up_to_date(root: Path, stage: str) -> bool:
    """True when DVC has a lock entry for `stage` that matches its current params, code and inputs."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return not repo.status(targets=[stage], with_deps=False)


def dvc_record(root: Path, stage: str) -> None:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        repo.commit(stage, force=True)


def trains_its_model(params) -> bool:
    """True when the pipeline's model is the organism that pretrain writes (a real backbone is never pretrained)."""
    return Path(params.model.path).expanduser().resolve() == Path(params.pretrain.output).expanduser().resolve()


@flow(name="seg4diff")
def pipeline(
    params_path: str = "params.yaml",
    presets: list[str] | None = None,
    overrides: dict | None = None,
    stages: list[str] | None = None,
    force: bool = False,
) -> dict:
    """Runs the stages in order (all by default) in the directory of `params_path`; returns what each stage did."""
    root = Path(params_path).resolve().parent
    os.chdir(root)  # stage outputs are relative to the params file, as under `dvc repro`
    params = load_params(Path(params_path).name, overrides, presets or ())  # validated once, before any stage runs
    unknown = set(stages or []) - set(STAGES)
    if unknown:
        raise ConfigError(f"unknown stages {sorted(unknown)}; the stages are {', '.join(STAGES)}")
    chosen = [s.name for s in REGISTRY if stages is None or s.name in stages]
    logger = get_run_logger()
    if "pretrain" in chosen and not trains_its_model(params):
        chosen.remove("pretrain")
        logger.info(
            "stage pretrain skipped: it trains the Shapes organism (pretrain.output %s), and model.path is %s",
            params.pretrain.output,
            params.model.path,
        )
    for stage in chosen:  # every chosen stage's cross-field checks, before the first one loads anything
        check_stage(params, stage)
    use_dvc = (root / "dvc.yaml").exists() and not overrides and not presets and not force
    specs = yaml.safe_load((root / "dvc.yaml").read_text())["stages"] if use_dvc else {}
    report = {}
    configure(params.tracking)
    with mlflow.start_run(
        run_name="pipeline", tags={"git_commit": git_commit(root), "params_hash": params_hash(params)}
    ):
        for stage in chosen:
            if use_dvc and dvc_up_to_date(root, stage):
                logger.info(
                    "stage %s is up to date (dvc status): skipped; its MLflow run shows the recorded outputs", stage
                )
                log_reused_stage(stage, params, specs[stage])
                report[stage] = "up to date (dvc.lock): reused"
                continue
            for_stage(STAGES[stage].flow(), params)(
                params_path=Path(params_path).name, presets=presets, overrides=overrides
            )
            if use_dvc:
                dvc_record(root, stage)
            report[stage] = "ran"
        create_markdown_artifact(
            key="pipeline-run",
            markdown="# seg4diff pipeline\n\n| stage | |\n|---|---|\n"
            + "\n".join(f"| {s} | {r} |" for s, r in report.items()),
        )
    return report


def _pipeline_options(parser) -> None:
    parser.add_argument(
        "--stages", nargs="+", choices=list(STAGES), metavar="STAGE", help=f"only these stages ({', '.join(STAGES)})"
    )
    parser.add_argument(
        "--force", action="store_true", help="run the chosen stages even when dvc.lock says they are up to date"
    )


if __name__ == "__main__":
    report = main("pipeline", pipeline, _pipeline_options, lambda args: {"stages": args.stages, "force": args.force})
    print("\n".join(f"{stage:<9} {what}" for stage, what in report.items()))
