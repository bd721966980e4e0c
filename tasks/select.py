"""Task of the select stage: apply the selection rule to the layer scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger, task

from seg4diff.config import Params
from seg4diff.evaluation.selection import paired_vs_runner_up, select_expert, stats_path


@task(name="select-expert")
def select_expert_task(params: Params) -> dict:
    scores_path = Path(params.score.output)
    if not scores_path.exists():
        raise FileNotFoundError(f"{scores_path} does not exist: run the score stage first (dvc repro score)")
    p = params.select
    expert = select_expert(pd.read_csv(scores_path), p.rule, p.direction, p.force_layer, p.force_sigma)
    stats = stats_path(params.score.output)
    if "runner_up" in expert and stats.exists():
        with np.load(stats) as arrays:
            expert["vs_runner_up"] = paired_vs_runner_up(
                expert, dict(arrays), params.score.bootstrap_resamples, params.score.seed
            )
    elif "runner_up" in expert:  # a clone without the DVC cache: scores in git, per-sample statistics not
        get_run_logger().warning(
            "%s is missing (the score stage writes it): no paired expert − runner-up interval; "
            "run `dvc repro score` or `python -m flows.score` to get it",
            stats,
        )
    return expert
