"""Stage `readouts`: every way of reading the stored attention, chosen on the selection split and scored on the
report split by the same code, protocol and paired bootstrap (seg4diff.evaluation.readouts)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from prefect.artifacts import create_markdown_artifact

from flows.cli import main
from flows.stages import Outcome, stage_flow
from seg4diff.config import Params
from seg4diff.reporting.outputs import write_csv
from seg4diff.reporting.plots import readout_figure
from tasks.readouts import extract_report_task, score_readouts_task


@stage_flow("readouts")
def readouts(params: Params, run) -> Outcome:
    """Writes readouts.output (one row per readout) and its figure; returns (and writes as metrics/readouts.json)
    each readout's mIoU and paired difference to `paper`, with the protocol."""
    r = params.readouts
    extract_report_task(params)
    rows = score_readouts_task(params)
    frame = pd.DataFrame([{k: v for k, v in row.items() if k != "choice"} for row in rows])
    write_csv(frame, r.output)
    mlflow.log_artifact(r.output)
    figure = readout_figure(rows, r.split)
    figure.savefig(Path(r.output).with_suffix(".png"), dpi=120)
    mlflow.log_figure(figure, "readouts.png")
    lines = [
        f"| {row['readout']} | {row['blocks']} | {row['miou']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}] | "
        f"{row['minus_paper']:+.3f} [{row['minus_paper_low']:+.3f}, {row['minus_paper_high']:+.3f}] | "
        f"{row['background_threshold']:g} |"
        for row in rows
    ]
    create_markdown_artifact(
        key="readouts",
        markdown=(
            f"# Readouts: chosen on {params.extract.split}, reported on {r.split} ({rows[0]['images']} images)\n\n"
            "| readout | blocks | mIoU [95%] | − paper [paired 95%] | background threshold |\n"
            "|---|---|---:|---:|---:|\n" + "\n".join(lines)
        ),
    )
    metrics = {f"{row['readout']}.miou": row["miou"] for row in rows}
    mlflow.log_metrics(metrics | {f"{row['readout']}.minus_paper": row["minus_paper"] for row in rows[1:]})
    summary = {
        "protocol": {"chosen_on": params.extract.split, "reported_on": r.split, "images": rows[0]["images"]},
        "readouts": {
            row["readout"]: {
                "miou": row["miou"],
                "ci": [row["ci_low"], row["ci_high"]],
                "minus_paper": row["minus_paper"],
                "minus_paper_ci": [row["minus_paper_low"], row["minus_paper_high"]],
            }
            for row in rows
        },
    }
    return Outcome(summary)  # also metrics/readouts.json


if __name__ == "__main__":
    main("readouts", readouts)
