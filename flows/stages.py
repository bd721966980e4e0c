"""The stage registry and the one skeleton every stage flow runs in.

A stage is named once, here: the same word is its flow (`flows/<name>.py`, `python -m flows.<name>`), its DVC stage,
its params group and its MLflow run. The pipeline flow, the runners, the deployments and the DVC declarations test
read this registry; `stage_flow` owns what surrounds every stage (params, checks, MLflow run, metrics file, errors):

    @stage_flow("score")
    def score(params: Params, run) -> Outcome:
        ...
        return Outcome(headline, metrics=headline)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prefect import flow

from flows.tracking import stage_run
from seg4diff.config import Params, check_stage, load_params
from seg4diff.errors import ConfigError, DataError, ResourceError
from seg4diff.reporting.outputs import write_json


@dataclass(frozen=True)
class Stage:
    name: str
    logged: tuple[str, ...]  # params groups logged to the stage's MLflow run
    metrics: str | None = None  # the metrics file the skeleton writes (declared `metrics` in dvc.yaml)
    sharded: bool = False  # its tasks run as shards on Dask workers (flows.runners)

    def metrics_path(self, params: Params) -> str | None:
        """Returns where this run's metrics file goes: the tracked `metrics` path when the stage writes where dvc.yaml
        says (its output setting at the default), else beside the redirected output, never over the tracked file."""
        group = getattr(params, self.name, None)
        if self.metrics is None or group is None or "output" not in type(group).model_fields:
            return self.metrics
        if group.output == type(group).model_fields["output"].default:
            return self.metrics
        return str(Path(group.output).parent / f"{self.name}.metrics.json")

    @property
    def module(self) -> str:
        return f"flows.{self.name}"

    def flow(self):
        """Returns the stage's Prefect flow (imported on first use: flow modules import this registry)."""
        return getattr(importlib.import_module(self.module), self.name)


REGISTRY: tuple[Stage, ...] = (  # in pipeline order
    Stage("prepare", ("data", "prepare"), "metrics/prepare.json"),
    Stage("pretrain", ("pretrain",), "metrics/pretrain.json"),
    Stage("extract", ("model", "extract"), "metrics/extract.json", sharded=True),
    Stage("score", ("score",), "metrics/score.json"),
    Stage("select", ("select",)),
    Stage("causal", ("causal",), "metrics/causal.json"),
    Stage("finetune", ("finetune",), "metrics/finetune.json"),
    Stage("evaluate", ("evaluate",), sharded=True),  # writes evaluate.output, its dvc.yaml metrics file
    Stage("readouts", ("readouts",), "metrics/readouts.json"),
    Stage("explore", ("explore",)),  # last: it shows the readouts' maps too
)
STAGES: dict[str, Stage] = {stage.name: stage for stage in REGISTRY}


@dataclass
class Outcome:
    """What a stage body returns: the flow's return value and the numbers for its metrics file (None: the value)."""

    value: object
    metrics: dict | None = None


class StageError(RuntimeError):
    """A stage failed for a reason other than a wrong setting or input (those keep their own one-line type)."""


def stage_flow(name: str) -> Callable:
    """Returns a decorator making `body(params, run) -> Outcome | value` the Prefect flow of stage `name`.

    The flow takes the command line's arguments (params file, presets, overrides), validates the settings and the
    stage's cross-field checks before anything loads, runs the body inside the stage's MLflow run (its groups
    logged), writes the metrics file at 6 significant digits (beside a redirected output: `Stage.metrics_path`) and
    returns the value. ConfigError, DataError and ResourceError pass through unchanged (one line on the command line);
    any other failure is re-raised as StageError naming the stage.
    """
    stage = STAGES[name]

    def decorate(body: Callable[[Params, object], object]):
        def run_stage(
            params_path: str = "params.yaml", presets: list[str] | None = None, overrides: dict | None = None
        ):
            params = load_params(params_path, overrides, presets or ())
            check_stage(params, name)
            try:
                with stage_run(name, params, stage.logged) as run:
                    outcome = body(params, run)
            except (ConfigError, DataError, ResourceError):
                raise
            except Exception as error:
                raise StageError(f"stage '{name}' failed: {error}") from error
            outcome = outcome if isinstance(outcome, Outcome) else Outcome(outcome)
            metrics = stage.metrics_path(params)
            if metrics:
                write_json(metrics, outcome.value if outcome.metrics is None else outcome.metrics)
            return outcome.value

        run_stage.__name__, run_stage.__qualname__ = body.__name__, body.__qualname__
        run_stage.__module__, run_stage.__doc__ = body.__module__, body.__doc__
        return flow(name=name, description=(body.__doc__ or name).strip().splitlines()[0])(run_stage)

    return decorate
