"""Task of the select stage: apply the selection rule to the layer scores."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task

from seg4diff.config import Params
from seg4diff.scoring import stats_path
from seg4diff.selection import paired_vs_runner_up, select_expert


@task(name="select-expert")
def select_expert_task(params: Params) -> dict:
    scores_path = Path(params.score.output)
    if not scores_path.exists():
        raise FileNotFoundError(f"{scores_path} does not exist: run the score stage first (dvc repro score)")
    p = params.select
    expert = select_expert(pd.read_csv(scores_path), p.rule, p.direction, p.force_layer, p.force_timestep)
    if "runner_up" in expert:
        with np.load(stats_path(params.score.output)) as stats:
            expert["vs_runner_up"] = paired_vs_runner_up(expert, dict(stats), params.score.bootstrap_resamples, params.score.seed)
    return expert
