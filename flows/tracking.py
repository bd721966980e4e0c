"""MLflow tracking: a SQLite store at an absolute path under the repository, one run per stage."""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import mlflow
from pydantic import BaseModel

from seg4diff.config import Params, TrackingParams


def repo_root() -> Path:
    """Returns the directory holding params.yaml (the working directory of every stage)."""
    return Path.cwd().resolve()


def tracking_uri(params: TrackingParams, root: Path | None = None) -> str:
    """Returns the absolute SQLite URI (MLflow's default is relative to whatever directory a command runs in)."""
    path = Path(params.mlflow_db)
    return f"sqlite:///{path if path.is_absolute() else (root or repo_root()) / path}"


def configure(params: TrackingParams, root: Path | None = None) -> str:
    """Points MLflow at the project's store and experiment (artifacts under <root>/mlartifacts); returns the experiment
    id."""
    root = root or repo_root()
    mlflow.set_tracking_uri(tracking_uri(params, root))
    experiment = mlflow.get_experiment_by_name(params.experiment)
    if experiment is None:
        return mlflow.create_experiment(params.experiment, artifact_location=(root / "mlartifacts").as_uri())
    return experiment.experiment_id


def flatten(group: BaseModel | dict, prefix: str = "") -> dict[str, str]:
    """Returns a params group as {dotted.key: value} for mlflow.log_params."""
    items = group.model_dump() if isinstance(group, BaseModel) else group
    flat = {}
    for key, value in items.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return flat


def params_hash(params: Params) -> str:
    return hashlib.sha256(params.model_dump_json().encode()).hexdigest()[:12]


def git_commit(root: Path | None = None) -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root or repo_root(), capture_output=True, text=True, check=True
        ).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


@contextlib.contextmanager
def stage_run(stage: str, params: Params, groups: tuple[str, ...]) -> Iterator[mlflow.ActiveRun]:
    """Opens an MLflow run named after the stage (nested when a pipeline run is active) logging its params groups."""
    experiment_id = configure(params.tracking)
    nested = mlflow.active_run() is not None
    with mlflow.start_run(
        run_name=stage,
        experiment_id=experiment_id,
        nested=nested,
        tags={"stage": stage, "git_commit": git_commit(), "params_hash": params_hash(params)},
    ) as run:
        for group in groups:
            mlflow.log_params(flatten(getattr(params, group), f"{group}."))
        yield run


def numeric_leaves(data, prefix: str = "") -> dict[str, float]:
    """Returns the numeric leaves of a metrics JSON as {dotted.key: value}."""
    if isinstance(data, dict):
        return {k: v for key, value in data.items() for k, v in numeric_leaves(value, f"{prefix}{key}.").items()}
    if isinstance(data, (int, float)) and not isinstance(data, bool):
        return {prefix.rstrip("."): float(data)}
    return {}


def _entries(items: list) -> list[str]:
    """dvc.yaml lists entries as strings or one-key mappings (path: options)."""
    return [next(iter(item)) if isinstance(item, dict) else item for item in items or []]


REUSED_ARTIFACT_LIMIT = 10 * 2**20  # outputs larger than this stay in the DVC cache, not copied into MLflow


def log_reused_stage(stage: str, params: Params, spec: dict) -> None:
    """Logs an MLflow run for a stage that DVC found up to date, from what its dvc.yaml entry declares.

    Params: the groups the stage declares; metrics: every number of its metrics files; artifacts: its outputs,
    plots and metrics files up to REUSED_ARTIFACT_LIMIT each. Tagged `reused` with the dvc.lock it matched.
    """
    groups = sorted({entry.split(".")[0] for entry in _entries(spec.get("params"))})
    with stage_run(stage, params, tuple(groups)):
        mlflow.set_tags({"reused": "true", "reused_from": "dvc.lock (dvc status: up to date)"})
        for path in _entries(spec.get("metrics")):
            if Path(path).is_file():
                mlflow.log_metrics(numeric_leaves(json.loads(Path(path).read_text())))
        for path in map(Path, _entries(spec.get("outs")) + _entries(spec.get("plots")) + _entries(spec.get("metrics"))):
            if path.is_file() and path.stat().st_size <= REUSED_ARTIFACT_LIMIT:
                mlflow.log_artifact(str(path))
            elif (
                path.is_dir() and sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) <= REUSED_ARTIFACT_LIMIT
            ):
                mlflow.log_artifacts(str(path), path.name)
