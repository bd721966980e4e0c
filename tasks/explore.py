"""Task of the explore stage: the attention explorer page from the store, the layer scores and the expert."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task

from seg4diff.config import Params
from seg4diff.evaluation.scoring import open_scored, store_background_threshold
from seg4diff.evaluation.selection import read_expert
from seg4diff.reporting.explorer import explorer_data, render_html
from seg4diff.reporting.readout_maps import read_readout_maps, readout_maps_path

CAUSAL_METRICS = ("object_recall", "clip_score", "flow_loss_increase")  # the first present is drawn


def causal_curve(params: Params) -> pd.DataFrame | None:
    """The causal stage's per-layer effect on the first of CAUSAL_METRICS it measured (at the largest dose matched
    across layers), for the perturbation whose largest effect is largest (the clearest contrast between layers), when
    the stage ran."""
    path = Path(params.causal.output)
    if not path.exists():
        return None
    table = pd.read_csv(path)
    metric = next((m for m in CAUSAL_METRICS if m in set(table.metric)), None)
    if metric is None:
        return None
    rows = table[table.metric == metric]
    if "comparison" in rows:  # one row per layer: vs the unperturbed model, at the largest matched dose (else full)
        rows = rows[rows.comparison == "vs_unperturbed"]
        doses = sorted({d for d in rows.dose.astype(str) if d != "full"}, key=float)
        rows = rows[rows.dose.astype(str) == (doses[-1] if doses else "full")]
    kind = rows.groupby("perturbation").delta.apply(lambda d: d.abs().max()).idxmax()
    rows = rows[rows.perturbation == kind]
    return pd.DataFrame({"layer": rows.layer, "metric": f"{kind}: Δ {metric}", "value": rows.delta})


@task(name="build-explorer")
def build_explorer_task(params: Params) -> dict:
    """Writes explore.output; returns its size and what it holds."""
    store, prepared = open_scored(params.extract.output, params.prepare.output, params.score.sigmas)
    scores = pd.read_csv(params.score.output)
    expert = read_expert(params.select.output)
    data = explorer_data(
        store,
        prepared,
        scores,
        expert,
        params.explore.samples,
        store_background_threshold(store, params.prompt),
        params.explore.display_size,
        causal_curve(params),
        read_readout_maps(readout_maps_path(params.readouts.store)),
    )
    html = render_html(
        data, f"seg4diff attention explorer — {store.attrs.get('model', '')}, {store.attrs.get('split', '')} split"
    )
    output = Path(params.explore.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(html, encoding="utf-8")
    return {
        "path": str(output),
        "megabytes": output.stat().st_size / 2**20,
        "samples": len(data["samples"]),
        "layers": len(data["layers"]),
        "heads": len(data["heads"]),
        "sigmas": len(data["sigmas"]),
    }
