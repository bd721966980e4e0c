"""Task of the explore stage: the attention explorer page from the store, the layer scores and the expert."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from prefect import task

from seg4diff.config import Params
from seg4diff.explorer import explorer_data, render_html
from tasks.score import background_threshold, load_inputs


@task(name="build-explorer")
def build_explorer_task(params: Params) -> dict:
    """Writes explore.output; returns its size and what it holds."""
    store, prepared = load_inputs(params)
    scores = pd.read_csv(params.score.output)
    expert = json.loads(Path(params.select.output).read_text())
    data = explorer_data(store, prepared, scores, expert, params.explore.samples, background_threshold(params, store),
                         params.explore.display_size)
    html = render_html(data, f"seg4diff attention explorer — {store.attrs.get('model', '')}, {store.attrs.get('split', '')} split")
    output = Path(params.explore.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(html, encoding="utf-8")
    return {"path": str(output), "megabytes": output.stat().st_size / 2**20, "samples": len(data["samples"]),
            "blocks": len(data["layers"]), "heads": len(data["heads"]), "sigmas": len(data["sigmas"])}
