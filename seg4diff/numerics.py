"""Pinned CPU numerics: the same bits from the same inputs on any x86-64 machine with AVX2.

A float32 result depends on more than its inputs: the BLAS kernel MKL picks for the CPU vendor, instruction set and
cache sizes, ATen's vectorised kernels (AVX-512 or AVX2), oneDNN's JIT kernels, and how many threads split a
reduction. One flipped bit flips an argmax pixel somewhere and changes an mIoU in its sixth digit, so a store written
on another machine would not match dvc.lock and every stage after it would re-run. Pinned (the default), a process
uses:
- MKL's conditional numerical reproducibility on its `COMPATIBLE` branch — the one branch Intel documents as giving
  the same results on Intel and on non-Intel CPUs (SSE2 kernels, no approximate reciprocals);
- ATen's AVX2 kernels (`ATEN_CPU_CAPABILITY`), the same instructions on every AVX2 machine;
- no oneDNN (`torch.backends.mkldnn.enabled = False`: its JIT kernels block by the cache sizes of the CPU);
- a fixed number of torch threads (`THREADS`), whatever the machine has: measured here, a generation batch gives
  the same bits with 1 and 2 threads and other bits with 3, and a training step differs at every thread count.
Set SEG4DIFF_NUMERICS=native for the machine's fastest kernels (results then match only runs on the same machine);
`benchmarks/pinned_numerics.py` measures what pinning costs.

Call `pin_cpu_numerics()` at the start of a process, before torch runs its first operation: the entry points do
(flows/, tasks/, tests/conftest.py). Child processes (Dask workers, Prefect's) inherit the environment it sets.
"""

from __future__ import annotations

import ctypes
import os
import platform
from pathlib import Path

MODE_VARIABLE = "SEG4DIFF_NUMERICS"  # pinned (default) | native
THREADS = 2  # torch threads of every pinned process: a reduction split another way gives other bits (measured)
MKL_CBWR_BRANCH, MKL_CBWR_COMPATIBLE = 1, 3  # mkl_cbwr_get's "which branch" query and the COMPATIBLE branch
PINNED_ENVIRONMENT = {
    "MKL_CBWR": "COMPATIBLE",
    "ATEN_CPU_CAPABILITY": "avx2",
    "OMP_NUM_THREADS": str(THREADS),
    "MKL_NUM_THREADS": str(THREADS),
}


class NumericsError(RuntimeError):
    """The process could not be pinned (torch ran with other kernels before pin_cpu_numerics)."""


def numerics_mode() -> str:
    """Returns 'pinned' or 'native' from SEG4DIFF_NUMERICS (unset: pinned); raises ValueError on another value."""
    mode = os.environ.get(MODE_VARIABLE, "pinned").strip().lower() or "pinned"
    if mode not in ("pinned", "native"):
        raise ValueError(f"{MODE_VARIABLE}={mode!r}: choose pinned (reproducible on any x86-64) or native (fastest)")
    return mode


def pin_cpu_numerics() -> str:
    """Returns the numerics mode after pinning this process's CPU kernels and threads (unless native). Raises
    NumericsError when a kernel choice had already been made otherwise (torch used before this call)."""
    if numerics_mode() == "native":
        return "native"
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    os.environ.update(PINNED_ENVIRONMENT if x86 else {"OMP_NUM_THREADS": str(THREADS)})  # read lazily; inherited
    import torch

    torch.set_num_threads(THREADS)
    torch.backends.mkldnn.enabled = False
    if not x86:  # MKL and ATen's AVX2 kernels are x86's: elsewhere only threads and oneDNN are pinned
        return "pinned"
    branch = _set_mkl_branch(torch)
    capability = torch.backends.cpu.get_cpu_capability()
    problems = []
    if capability != "AVX2":
        problems.append(f"ATen runs {capability} kernels (AVX2 wanted: was torch used before pinning?)")
    if branch not in (None, MKL_CBWR_COMPATIBLE):
        problems.append(f"MKL's reproducibility branch is {branch} (COMPATIBLE = {MKL_CBWR_COMPATIBLE} wanted)")
    if problems:
        raise NumericsError("cannot pin the CPU numerics: " + "; ".join(problems) + f" (or set {MODE_VARIABLE}=native)")
    return "pinned"


def _set_mkl_branch(torch) -> int | None:
    """Returns MKL's reproducibility branch after setting it to COMPATIBLE; None when torch is not built with MKL."""
    if not torch.backends.mkl.is_available():
        return None
    library = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
    library.mkl_serv_cbwr_set(MKL_CBWR_COMPATIBLE)  # a no-op once MKL has run: then the check below says so
    return library.mkl_serv_cbwr_get(MKL_CBWR_BRANCH)


def numerics_report() -> dict:
    """Returns what the process's numerics are, for metrics files: mode, ATen capability, threads, oneDNN, MKL."""
    import torch

    return {
        "mode": numerics_mode(),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "onednn": torch.backends.mkldnn.enabled,
        "mkl_cbwr": os.environ.get("MKL_CBWR", ""),
    }
