"""Benchmark: what pinned CPU numerics (seg4diff.numerics) cost against the machine's fastest kernels.

    .venv/bin/python benchmarks/pinned_numerics.py [--repeats 3]

Each workload runs in a fresh process per mode (the kernels are chosen when a process starts), on the shipped
organism: one training step (pretrain's batch of 48 at σ ~ logit-normal), a capture of every block's attention at
one σ for 16 images (extract's inner loop), and 16 captions generated over 20 steps at guidance 4 (causal, evaluate).
Prints seconds per workload (best of --repeats) for `pinned` and `native` and `ratio=` (pinned / native).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKLOADS = """
import json, sys, time
import torch
from seg4diff.numerics import numerics_report, pin_cpu_numerics

pin_cpu_numerics()
from seg4diff.capture.attention import capture_attention
from seg4diff.organism.pipeline import OrganismPipeline
from seg4diff.organism.sampling import sample
from seg4diff.training.pretrain import flow_matching_loss

repeats = int(sys.argv[1])
pipe = OrganismPipeline.from_pretrained("seg4diff/assets/organism")
captions = ["red circle and blue square", "green triangle and background", "yellow square"] * 16
generator = torch.Generator().manual_seed(0)
x0 = torch.rand(48, 3, 32, 32, generator=generator) * 2 - 1
noise = torch.randn(48, 3, 32, 32, generator=generator)
sigma = torch.sigmoid(torch.randn(48, generator=generator))


def train_step():
    for module in pipe.modules:
        module.zero_grad(set_to_none=True)
    flow_matching_loss(pipe, x0, captions[:48], sigma, noise).backward()


def capture():
    with torch.no_grad(), capture_attention(pipe.transformer, diagnostics=True) as tape:
        embeds, pooled = pipe.encode_prompt(captions[:16])
        s = torch.full((16,), 0.5)
        pipe.transformer(
            hidden_states=(1 - 0.5) * x0[:16] + 0.5 * noise[:16],
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            timestep=s * 1000,
            return_dict=False,
        )


def generate():
    sample(pipe, captions[:16], steps=20, guidance=4.0, seed=0)


times = {}
for name, work in {"train_step": train_step, "capture": capture, "generate_16x20": generate}.items():
    work()  # warm
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - began)
    times[name] = best
print(json.dumps({"times": times, "numerics": numerics_report()}))
"""


def run(mode: str, repeats: int) -> dict:
    env = dict(os.environ, SEG4DIFF_NUMERICS=mode)
    done = subprocess.run(
        [sys.executable, "-c", WORKLOADS, str(repeats)], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode:
        sys.exit(f"{mode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {mode: run(mode, args.repeats) for mode in ("pinned", "native")}
    for mode, result in results.items():
        print(f"{mode}: {result['numerics']}")
    for name in results["pinned"]["times"]:
        pinned, native = results["pinned"]["times"][name], results["native"]["times"][name]
        print(f"{name}: pinned {pinned:.3f} s, native {native:.3f} s, ratio={pinned / native:.2f}")


if __name__ == "__main__":
    main()
