"""Where shards run: a Dask cluster through prefect-dask (local by default, or the scheduler named in params)."""

from __future__ import annotations

import contextlib
import os

import dask
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from seg4diff.config import Params


def for_stage(stage_flow, params: Params):
    """Returns the stage flow with its task runner: the shard runner for sharded stages, Prefect's default otherwise."""
    from flows.stages import STAGES

    if not (stage_flow.name in STAGES and STAGES[stage_flow.name].sharded):
        return stage_flow
    if not params.orchestration.dask_address and params.orchestration.local_workers == 0:
        return stage_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))  # one shard after another
    return stage_flow.with_options(task_runner=shard_runner(params))


def shard_runner(params: Params) -> DaskTaskRunner:
    """Returns the task runner for extraction and evaluation shards.

    Workers declare GPU resources (`dask worker tcp://… --resources "GPU=1"`); the local cluster declares them too,
    so a shard's request means "one shard per worker slot" on a CPU machine. Workers report to the Prefect API in
    PREFECT_API_URL (flows.server.prefect_api exports it; remote workers must be started with it set).
    """
    from flows.server import configured_api

    if configured_api():  # local workers inherit the environment: the same API, never a server of their own
        os.environ["PREFECT_API_URL"] = configured_api()
    o = params.orchestration
    if o.dask_address:
        return DaskTaskRunner(address=o.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": o.local_workers,
            "threads_per_worker": 1,
            "processes": True,
            "resources": {"GPU": max(o.gpus_per_task, 1)},
            "dashboard_address": None,
        }
    )


def gpu_request(params: Params):
    """Returns a context in which submitted tasks request `gpus_per_task` GPUs from their Dask worker."""
    gpus = params.orchestration.gpus_per_task
    return dask.annotate(resources={"GPU": gpus}) if gpus else contextlib.nullcontext()
