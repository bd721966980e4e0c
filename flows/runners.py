"""Where shards run: a Dask cluster through prefect-dask (local by default, or the scheduler named in params)."""
from __future__ import annotations

import contextlib

import dask
from prefect_dask import DaskTaskRunner

from seg4diff.config import Params


def shard_runner(params: Params) -> DaskTaskRunner:
    """Returns the task runner for extraction and evaluation shards.

    Workers declare GPU resources (`dask worker tcp://… --resources "GPU=1"`); the local cluster declares them too,
    so a shard's request means "one shard per worker slot" on a CPU machine.
    """
    o = params.orchestration
    if o.dask_address:
        return DaskTaskRunner(address=o.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": o.local_workers, "threads_per_worker": 1, "processes": True,
                                          "resources": {"GPU": max(o.gpus_per_task, 1)}, "dashboard_address": None})


def gpu_request(params: Params):
    """Returns a context in which submitted tasks request `gpus_per_task` GPUs from their Dask worker."""
    gpus = params.orchestration.gpus_per_task
    return dask.annotate(resources={"GPU": gpus}) if gpus else contextlib.nullcontext()
