"""Benchmark: extraction shards on 2 single-threaded Dask workers against 1, the same shards.

    .venv/bin/python benchmarks/dask_scaling.py [--samples 192]

The shipped organism extracts a temporary Shapes split (32², every block and head, both directions, 4 σ, diagnostics:
the demo's settings) split into two batch-aligned ranges (`seg4diff.capture.extract.plan_ranges`), each a task on a
local
Dask cluster of single-threaded worker processes (torch limited to one thread each, as a GPU worker owns one GPU).
Clock: from submitting the shards to both stores' completion; cluster start-up and each worker's imports excluded.
Prints `speedup=`
(1 worker / 2 workers) and checks that both runs wrote identical stores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from dask.distributed import Client, LocalCluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import prepared_shapes  # noqa: E402

from seg4diff.capture.extract import extract_range, open_or_create, plan_ranges  # noqa: E402
from seg4diff.config import ExtractParams, ModelParams, PromptParams  # noqa: E402
from seg4diff.data.attention_store import StoreLayout, open_attention  # noqa: E402
from seg4diff.prompts import prompt_style

SIGMAS = [0.1, 0.3, 0.5, 0.7]
PROMPT = PromptParams()  # the organism's prompts (" and ", background by threshold)


def shard(prepared_path: str, out: str, start: int, stop: int, params: ExtractParams) -> int:
    """One extraction range in a worker process, with torch on one thread."""
    import dask
    import torch

    from seg4diff.backbones.backbone import load_backbone
    from seg4diff.data.prepared import open_prepared

    torch.set_num_threads(1)
    backbone = load_backbone(ModelParams(path=str(Path(__file__).resolve().parents[1] / "seg4diff/assets/organism")))
    # reads stay in this process (as in tasks/extract.py): a worker's own cluster is busy running this very task
    with torch.no_grad(), dask.config.set(scheduler="synchronous"):
        return extract_range(
            backbone,
            open_prepared(Path(prepared_path)),
            Path(out),
            start,
            stop,
            SIGMAS,
            list(range(6)),
            params,
            prompt_style(PROMPT, "gt_classes"),
        )


def _warm() -> None:
    import importlib

    import torch

    for module in ("seg4diff.capture.extract", "seg4diff.backbones.backbone", "seg4diff.data.prepared"):
        importlib.import_module(module)
    torch.set_num_threads(1)


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(workers: int, prepared: Path, out: Path, samples: int, params: ExtractParams) -> tuple[float, float]:
    """Returns (wall seconds, CPU seconds of the workers) for the shards on `workers` workers."""
    layout = StoreLayout(
        samples,
        list(range(6)),
        list(range(4)),
        SIGMAS,
        params.max_tokens,
        (16, 16),
        tuple(params.directions),
        params.diagnostics,
    )
    open_or_create(out, layout, {"fingerprint": f"benchmark-{workers}"})
    ranges = plan_ranges(samples, params.batch_size, 2)
    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        client.run(
            _warm
        )  # imports (torch, diffusers: seconds per process) happen before the clock, as in a long-lived cluster
        cpu_before = sum(client.run(_cpu_seconds).values())
        started = time.perf_counter()
        futures = [
            client.submit(shard, str(prepared), str(out), start, stop, params, pure=False) for start, stop in ranges
        ]
        computed = sum(client.gather(futures))
        seconds = time.perf_counter() - started
        cpu = sum(client.run(_cpu_seconds).values()) - cpu_before
    assert computed == samples, computed
    return seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=192)
    args = parser.parse_args()
    params = ExtractParams(sigmas=SIGMAS, batch_size=16, max_tokens=8, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepared_shapes(Path(tmp), ["val"], 32, 64, seed=0, num_val=args.samples) / "val.zarr"
        one = run(1, prepared, Path(tmp) / "one.zarr", args.samples, params)
        two = run(2, prepared, Path(tmp) / "two.zarr", args.samples, params)
        one_store, two_store = (open_attention(Path(tmp) / f"{n}.zarr").load() for n in ("one", "two"))
        identical = all(
            one_store[name].equals(two_store[name]) for name in one_store.data_vars
        )  # attrs hold the run's name
    print(
        f"{args.samples} samples in 2 shards: 1 worker {one[0]:.1f} s ({one[1] / one[0]:.2f} cores busy: its read and "
        "write "
        f"threads run beside the forward), 2 workers {two[0]:.1f} s ({two[1] / two[0]:.2f} cores busy); stores "
        f"identical: {identical}"
    )
    print(
        f"speedup={one[0] / two[0]:.2f}  (goal >= 1.8; at most {2 / (one[1] / one[0]):.2f} on 2 cores given the "
        "1-worker load)"
    )


if __name__ == "__main__":
    main()
