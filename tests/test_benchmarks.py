"""The GPU benchmark's code paths run on CPU at toy sizes, and its exactness check holds there."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_runs_on_cpu_at_toy_sizes():
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu.py", "--device", "cpu", "--small"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    errors = [float(e) for e in re.findall(r"max_abs_err=(\S+)", result.stdout)]
    assert len(errors) == 2 and max(errors) < 1e-6, result.stdout
    ratios = re.findall(r"ratio=(\d+\.\d+)", result.stdout)
    assert len(ratios) == 5 + 4 + 4, result.stdout  # SD3 batch 1 (with naive), SD3 batch 2, FLUX
