"""Benchmark: scoring cost as samples, classes, layers and heads grow — linear time, flat memory.

    .venv/bin/python benchmarks/scale.py                       # the default sizes, up to ADE-150 × SD3-medium
    .venv/bin/python benchmarks/scale.py --sizes 200x150x24x24  # samples x classes x layers x heads

Each size runs `seg4diff.evaluation.scoring.score_store` (the score stage's streaming pass: head-mean and per-head
predictions,
per-class statistics) and its bootstrap in a fresh process on a synthetic store: dask-backed random image→text maps
(16×16 tokens, 8 class tokens of 3 prompted classes per sample, one σ), generated chunk by chunk, and random 64×64
labels (8 MB at 2,000 samples), so nothing but the scoring itself holds memory. Prints one line per size ending
`peak_rss_mb=… seconds=…`,
then time per sample and the memory ratio between the largest and the smallest size.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import dask.array as da
import numpy as np
import xarray as xr

DEFAULT_SIZES = ("250x150x24x24", "500x150x24x24", "1000x150x24x24", "2000x150x24x24", "500x20x24x24", "500x150x6x4")
TOKENS, GRID, LABEL = 8, 16, 64


def synthetic(samples: int, classes: int, layers: int, heads: int) -> tuple[xr.Dataset, xr.DataArray]:
    """Returns a lazily generated attention store and labels of the given size (one chunk per sample)."""
    rng = np.random.default_rng(0)
    maps = (
        da.random.RandomState(0)
        .random_sample(
            (samples, layers, heads, 1, TOKENS, GRID, GRID), chunks=(1, layers, heads, 1, TOKENS, GRID, GRID)
        )
        .astype(np.float16)
    )
    prompted = np.stack([rng.choice(classes, 3, replace=False) for _ in range(samples)])
    token_class = prompted[np.arange(samples)[:, None], rng.integers(0, 3, (samples, TOKENS))].astype(np.int16)
    store = xr.Dataset(
        {
            "image_to_text": (("sample", "layer", "head", "timestep", "token", "y", "x"), maps),
            "token_class": (("sample", "token"), token_class),
        },
        coords={
            "layer": np.arange(layers),
            "head": np.arange(heads),
            "timestep": [500.0],
            "sigma": ("timestep", [0.5]),
        },
    )
    slots = rng.integers(0, 3, (samples, LABEL * LABEL))  # labels are small (2000 × 64 × 64 bytes): plain numpy
    labels = np.take_along_axis(prompted, slots, axis=1).reshape(samples, LABEL, LABEL).astype(np.uint8)
    return store, xr.DataArray(labels, dims=("sample", "label_y", "label_x"))


def run_one(size: str) -> None:
    from seg4diff.evaluation.scoring import score_store, tidy_scores

    samples, classes, layers, heads = map(int, size.split("x"))
    store, labels = synthetic(samples, classes, layers, heads)
    started = time.perf_counter()
    tables = score_store(store, labels, classes, progress=False)
    rows = len(tidy_scores(tables, 1000, 0))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"samples={samples} classes={classes} layers={layers} heads={heads} rows={rows} "
        f"per_sample_stats_mb={tables.per_sample.nbytes / 2**20:.1f} peak_rss_mb={peak:.0f} seconds={seconds:.1f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="samples x classes x layers x heads")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args.one)
        return
    results = []
    for size in args.sizes:
        line = subprocess.run(
            [sys.executable, __file__, "--one", size], capture_output=True, text=True, check=True
        ).stdout.strip()
        print(line, flush=True)
        fields = dict(part.split("=") for part in line.split())
        results.append({k: float(v) for k, v in fields.items()})
    grown = [
        r
        for r in results
        if r["classes"] == results[0]["classes"]
        and r["layers"] == results[0]["layers"]
        and r["heads"] == results[0]["heads"]
    ]
    first, last = grown[0], grown[-1]
    print(
        f"time per sample: {first['seconds'] / first['samples'] * 1e3:.1f} ms at {first['samples']:.0f} samples, "
        f"{last['seconds'] / last['samples'] * 1e3:.1f} ms at {last['samples']:.0f} "
        f"(time ratio {last['seconds'] / first['seconds']:.2f} for {last['samples'] / first['samples']:.0f}x the "
        "samples)"
    )
    print(
        f"peak memory ratio largest/smallest = {last['peak_rss_mb'] / first['peak_rss_mb']:.2f} "
        f"(goal: flat; < 2048 MB at 2000x150x24x24: {last['peak_rss_mb']:.0f} MB)"
    )


if __name__ == "__main__":
    main()
