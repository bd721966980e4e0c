"""Pinned CPU numerics: the same extraction (and training steps, and generation) under different ambient kernel and
thread settings gives the same bytes.

Machines of the pool differ in CPU vendor and instruction set; here the differences a machine makes are played by the
settings that select them: ATen's kernels (ATEN_CPU_CAPABILITY), MKL's instruction set and branch (MKL_CBWR,
MKL_ENABLE_INSTRUCTIONS), oneDNN's ISA and the thread counts."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, prepared_shapes

from seg4diff.data.prepared import preparation_settings

EXTRACT = """
import sys
import tasks  # pins this process's numerics, as every entry point does
from seg4diff.config import load_params
from seg4diff.numerics import numerics_report
from tasks.extract import extract_range_task, plan_extraction_task

params = load_params(sys.argv[1])
plan = plan_extraction_task.fn(params)
for start, stop in plan["ranges"]:
    extract_range_task.fn(params, start, stop, plan["sigmas"], plan["layers"])

# and what training and generation compute: two optimiser steps of the organism, then a short generation
import hashlib
import torch
from seg4diff.organism.pipeline import OrganismPipeline
from seg4diff.organism.sampling import sample
from seg4diff.training.pretrain import flow_matching_loss

pipe = OrganismPipeline.from_pretrained("seg4diff/assets/organism")
generator = torch.Generator().manual_seed(0)
x0 = torch.rand(12, 3, 32, 32, generator=generator) * 2 - 1
optimizer = torch.optim.AdamW([p for m in pipe.modules for p in m.parameters()], 1e-3)
for _ in range(2):
    optimizer.zero_grad()
    noise = torch.randn(x0.shape, generator=generator)
    sigma = torch.rand(12, generator=generator)
    flow_matching_loss(pipe, x0, ["red circle and blue square"] * 12, sigma, noise).backward()
    optimizer.step()
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for m in pipe.modules for p in m.parameters()))
digest.update(sample(pipe, ["green triangle", "red circle and blue square"] * 3, steps=3, guidance=4.0, seed=0).numpy())
print("trained", digest.hexdigest())
print("numerics", numerics_report())
"""

AMBIENT = {  # what another machine (or a user's shell) would have chosen
    "this machine": {},
    "AVX-512 kernels, one thread": {"ATEN_CPU_CAPABILITY": "avx512", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    "no vector kernels, AVX2 BLAS, four threads": {
        "ATEN_CPU_CAPABILITY": "default",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "OMP_NUM_THREADS": "4",
    },
    "MKL's own dispatch, oneDNN AVX2": {"MKL_CBWR": "AUTO", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
SETTINGS = ("SEG4DIFF_NUMERICS", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_CBWR")


def _params_file(tmp_path: Path, output: Path) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["root"] = str(tmp_path / "raw")
    raw["data"]["shapes"] |= {"num_train": 1, "num_val": 6, "num_test": 1, "seed": 4}
    raw["prepare"] |= {"splits": ["val"], "output": str(tmp_path / "prepared")}
    raw["extract"] |= {"output": str(output), "sigmas": [0.3, 0.7], "batch_size": 4, "workers": 1}
    raw["tracking"] = {"mlflow_db": str(tmp_path / "mlflow.db")}
    path = output.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(raw))
    return path


def _extract(tmp_path: Path, name: str, environment: dict) -> str:
    """Returns one digest of every file of the store extracted in a fresh process with `environment` added."""
    output = tmp_path / f"{name}.zarr"
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS} | environment
    done = subprocess.run(
        [sys.executable, "-c", EXTRACT, str(_params_file(tmp_path, output))],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    digest = hashlib.sha256(next(line for line in done.stdout.splitlines() if line.startswith("trained")).encode())
    for file in sorted(p for p in output.rglob("*") if p.is_file()):
        digest.update(file.relative_to(output).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


@pytest.mark.slow
def test_the_same_extraction_under_other_kernels_and_thread_counts_writes_byte_identical_stores(tmp_path):
    from seg4diff.config import load_params

    params = load_params(_params_file(tmp_path, tmp_path / "probe.zarr"))
    prepared_shapes(
        tmp_path / "raw", ["val"], 32, "native", 4, preparation_settings(params.data, params.prepare), num_val=6
    )
    (tmp_path / "prepared").mkdir()
    (tmp_path / "raw" / "val.zarr").rename(tmp_path / "prepared" / "val.zarr")
    pinned = {name: _extract(tmp_path, f"pinned-{k}", env) for k, (name, env) in enumerate(AMBIENT.items())}
    assert len(set(pinned.values())) == 1, pinned
    # the control: unpinned, the same two kernel choices give other bytes (so the test can fail)
    native = [
        _extract(tmp_path, f"native-{capability}", {"SEG4DIFF_NUMERICS": "native", "ATEN_CPU_CAPABILITY": capability})
        for capability in ("default", "avx2")
    ]
    assert native[0] != native[1]
