"""Stage `select`: pick the expert layer (and σ) from the layer scores by the rule in params."""

from __future__ import annotations

import mlflow
from prefect.artifacts import create_markdown_artifact

from flows.cli import main
from flows.stages import stage_flow
from seg4diff.config import Params
from seg4diff.reporting.outputs import round_floats, write_json
from tasks.select import select_expert_task


@stage_flow("select")
def select(params: Params, run) -> dict:
    """Writes results/expert.json; returns the choice."""
    expert = select_expert_task(params)
    mlflow.log_metrics(
        {
            "expert_layer": expert["layer"],
            "expert_sigma": expert["sigma"],
            "expert_miou": expert["miou"],
            "expert_ci_low": expert["ci_low"],
            "expert_ci_high": expert["ci_high"],
        }
    )
    mlflow.log_dict(expert, "expert.json")
    runner = expert.get("runner_up")
    lines = [
        f"| expert | {expert['layer']} | {expert['sigma']:g} | {expert['miou']:.3f} | "
        f"{expert['ci_low']:.3f}–{expert['ci_high']:.3f} |"
    ]
    if runner:
        lines.append(
            f"| runner-up | {runner['layer']} | {runner['sigma']:g} | {runner['miou']:.3f} | "
            f"{runner['ci_low']:.3f}–{runner['ci_high']:.3f} |"
        )
    create_markdown_artifact(
        key="expert-layer",
        markdown=(
            f"# Expert layer ({expert['rule']}{', forced' if expert['forced'] else ''}, {expert['direction']})\n\n"
            "| | layer | σ | mIoU | 95% interval |\n|---|---:|---:|---:|---|\n"
            + "\n".join(lines)
            + f"\n\nIntervals overlap: {expert.get('intervals_overlap')}"
            + (
                f"; expert − runner-up on the same images: {expert['vs_runner_up']['delta_miou']:+.3f} "
                f"[{expert['vs_runner_up']['ci'][0]:+.3f}, {expert['vs_runner_up']['ci'][1]:+.3f}] (paired bootstrap)"
                if "vs_runner_up" in expert
                else ""
            )
        ),
    )
    expert = round_floats(expert)  # as written
    write_json(params.select.output, expert)
    return expert


if __name__ == "__main__":
    main("select", select)
