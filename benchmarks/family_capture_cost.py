"""Benchmark: what seg4diff's capture costs on every covered family, as a ratio to the stock forward.

    .venv/bin/python benchmarks/family_capture_cost.py [--heads 8] [--head-dim 64] [--grid 32] [--text 77]
    python3 benchmarks/family_capture_cost.py --device cuda --dtype bfloat16 --heads 48 --head-dim 128 --grid 64 \
        --text 512 --only Flux2Transformer2DModel      # FLUX.2-dev's width at 1024 px (benchmarks/gpu.sh)

Each family's test case (tests/family_cases) is rebuilt at a representative width — `--heads` × `--head-dim`
(default 8 × 64 = 512, SD3-medium's head size), rotary axes scaled with the head size — with its layer counts kept
(1–3 of each kind), over a `--grid`² image token grid (default 32 × 32 = 1,024 tokens: SD3 at 512 px, FLUX at 512 px)
and a `--text`-token prompt (default 77), batch 2, fp32, on the CPU under seg4diff's pinned numerics. Per family it
prints the median wall time of the stock forward and two capture ratios, measured in one run:

- `extract`: what the extract stage records (every layer, image→text, head mean, KEPT = 5 kept text tokens);
- `full`: both directions, every head and every text token.

On CUDA it also prints the peak memory each capture adds to the stock forward's, and on any device `exact`: the largest
difference of the first layer's captured image→text (and text→image) probabilities from the naive softmax of the
family's test reference, built from that layer's own projections in the same dtype.

Goal (issue 27): `extract` ≤ 1.05× the stock forward.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import statistics
import sys
import time
from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import family_cases  # noqa: E402

from seg4diff.capture.attention import capture_attention  # noqa: E402
from seg4diff.capture.families import family_of, joint_attention_modules  # noqa: E402
from seg4diff.numerics import pin_cpu_numerics  # noqa: E402

HEADS = ("num_attention_heads", "n_heads", "num_heads")
KV_HEADS = ("num_key_value_heads", "n_kv_heads", "num_kv_heads")
WIDTHS = ("hidden_size", "dim")  # configs that give the width rather than the head size
ROTARY = ("axes_dims_rope", "axes_dim_rope", "axes_dims", "axes_dim", "mrope_section")
KEPT = 5  # text tokens the extract variant keeps (the classes of an image; Lumina 2's case has 5 valid tokens)
GRID_GLOBALS = (("ROWS_", "COLS_"), ("Z_ROWS", "Z_COLS"))


def widened(transformer: torch.nn.Module, heads: int, head_dim: int, grid: int) -> torch.nn.Module:
    """Returns the transformer's class built from its config at `heads` × `head_dim`, rotary axes scaled with the
    head size, position tables large enough for a `grid`² latent; parameters a tiny build left uninitialised drawn."""
    config = dict(transformer.config)
    head_key = next(key for key in HEADS if key in config)
    width_key = next((key for key in WIDTHS if key in config), None)
    old_head_dim = config[width_key] // config[head_key] if width_key else config["attention_head_dim"]
    factor = head_dim / old_head_dim
    for key in KV_HEADS:
        if key in config:
            config[key] = max(1, heads * config[key] // config[head_key])
    config[head_key] = heads
    if width_key:
        config[width_key] = heads * head_dim
    else:
        config["attention_head_dim"] = head_dim
    for key in ROTARY:
        if key in config:
            config[key] = type(config[key])(int(d * factor) for d in config[key])
    if "rope_axes_dim" in config and sum(config["rope_axes_dim"]) == old_head_dim:  # dims, not CogView4's positions
        config["rope_axes_dim"] = type(config["rope_axes_dim"])(int(d * factor) for d in config["rope_axes_dim"])
    if "caption_projection_dim" in config:
        config["caption_projection_dim"] = heads * head_dim
    if "pos_embed_max_size" in config:  # a side of positions (SD3), or their count (AuraFlow: a square of them)
        side = 2 * grid
        count = type(transformer).__name__ == "AuraFlowTransformer2DModel"
        config["pos_embed_max_size"] = max(config["pos_embed_max_size"], side * side if count else side)
    if "sample_size" in config:
        config["sample_size"] = max(config["sample_size"] or 0, 2 * grid)
    if "axes_lens" in config:
        config["axes_lens"] = type(config["axes_lens"])(max(n, 2 * grid + 128) for n in config["axes_lens"])
    config = {key: value for key, value in config.items() if not key.startswith("_")}
    torch.manual_seed(0)
    wide = type(transformer).from_config(config).eval()
    with torch.no_grad():
        for parameter in wide.parameters():
            if not torch.isfinite(parameter).all() or parameter.abs().max() > 1e4:  # torch.empty experts
                parameter.normal_(0, 0.02)
            elif parameter.ndim > 0 and not parameter.any():  # zero-initialised gates would silence the blocks
                parameter.normal_(0, 0.02)
    return wide


def moved(value, device: str, dtype: torch.dtype):
    """Returns `value` (a tensor, or lists / tuples / dicts of them) on `device`, floating tensors in `dtype` (position
    ids kept as they are: LongCat's 512 + row is not a bf16 number)."""
    if isinstance(value, torch.Tensor):
        return value.to(device, dtype) if value.is_floating_point() else value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(moved(v, device, dtype) for v in value)
    if isinstance(value, dict):
        return {k: v.to(device) if k.endswith("ids") else moved(v, device, dtype) for k, v in value.items()}
    return value


def first_layer_error(case, transformer, inputs, n_image: int) -> float:
    """Returns the largest |captured − naive| of the first joint layer's probabilities (both directions where text
    tokens query)."""
    module = joint_attention_modules(transformer)[0]
    seen = {}
    handle = module.register_forward_pre_hook(lambda m, a, k: seen.setdefault("call", (a, k)), with_kwargs=True)
    try:
        queries_only = 0 in case.queries_only
        directions = ("image_to_text",) if queries_only else ("image_to_text", "text_to_image")
        with torch.no_grad(), capture_attention(transformer, [0], directions) as cap:
            transformer(**inputs)
    finally:
        handle.remove()
    with torch.no_grad():
        naive = case.naive(module, *seen["call"]).float()
    image, text, (image_rows, text_rows) = family_of(transformer).split(naive.shape[-2], naive.shape[-1], n_image, 0)
    errors = [(cap.tensor("image_to_text")[:, 0].float() - naive[:, :, image_rows, text]).abs().max()]
    if not queries_only:
        errors.append((cap.tensor("text_to_image")[:, 0].float() - naive[:, :, text_rows, image]).abs().max())
    return float(max(errors))


def peak_extra(run, device: str) -> float:
    """Returns the peak GPU memory (GiB) `run` reaches beyond what was allocated before it (NaN off CUDA)."""
    if device != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**30


def interleaved_medians(runs: list, repeats: int) -> list[float]:
    """Returns each run's median wall time over `repeats` rounds that call every run once in turn (after one warm-up
    round), so that a drift of the machine's speed hits them alike."""
    for run in runs:
        run()
    times = [[] for _ in runs]
    for _ in range(repeats):
        for run, kept in zip(runs, times):
            start = time.perf_counter()
            run()
            kept.append(time.perf_counter() - start)
    return [statistics.median(kept) for kept in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--grid", type=int, default=32)
    parser.add_argument("--text", type=int, default=77)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="family class names (default: every covered family)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    diffusers_logging.set_verbosity_error()  # "modules … kept in float32" once per family
    if args.device == "cpu":
        pin_cpu_numerics()
    groups = [
        importlib.import_module(f"family_cases.{info.name}") for info in pkgutil.iter_modules(family_cases.__path__)
    ]
    for group in groups:  # every case's inputs read these module constants at call time
        for rows, cols in GRID_GLOBALS:
            if hasattr(group, rows):
                setattr(group, rows, args.grid)
                setattr(group, cols, args.grid)
        if hasattr(group, "TEXT"):
            group.TEXT = args.text
    machine = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} threads"
    print(
        f"width {args.heads}×{args.head_dim}, {args.grid}×{args.grid} image tokens, {args.text} text tokens, batch 2, "
        f"{args.dtype}, {args.device} ({machine}); "
        f"median of {args.repeats}"
    )
    print(
        f"{'family':34s} {'layers':>6s} {'stock s':>8s} {'extract':>8s} {'full':>6s} {'exact':>8s} "
        f"{'+GiB extract':>12s} {'+GiB full':>9s} {'stock GiB':>9s}"
    )
    for group in groups:
        for case in group.CASES:
            if args.only and case.name not in args.only:
                continue
            try:
                transformer = widened(case.build(), args.heads, args.head_dim, args.grid).to(args.device, dtype)
                inputs = moved(case.inputs(transformer), args.device, dtype)
                layers = None  # every joint layer
                with torch.no_grad():

                    def stock():
                        transformer(**inputs)

                    def extract():
                        with capture_attention(
                            transformer, layers, ("image_to_text",), text_tokens=list(range(KEPT)), head_mean=True
                        ):
                            transformer(**inputs)

                    directions = ("image_to_text",) if case.queries_only else ("image_to_text", "text_to_image")

                    def full():
                        with capture_attention(transformer, layers, directions):
                            transformer(**inputs)

                    def timed(run):
                        def call():
                            run()
                            if args.device == "cuda":
                                torch.cuda.synchronize()

                        return call

                    seconds = interleaved_medians([timed(stock), timed(extract), timed(full)], args.repeats)
                    ratios = [value / seconds[0] for value in seconds[1:]]
                    base = peak_extra(stock, args.device)
                    memory = [peak_extra(run, args.device) for run in (extract, full)]
                error = first_layer_error(case, transformer, inputs, args.grid * args.grid)
                count = len(joint_attention_modules(transformer))
                print(
                    f"{case.name:34s} {count:6d} {seconds[0]:8.3f} {ratios[0]:7.3f}× {ratios[1]:5.2f}× {error:8.1e} "
                    f"{memory[0] - base:12.3f} {memory[1] - base:9.3f} {base:9.3f}",
                    flush=True,
                )
            except Exception as error:  # a family this widening cannot build is reported, not hidden
                message = " ".join(str(error).split())[:90]
                print(f"{case.name:34s} not measured: {type(error).__name__}: {message}", flush=True)


if __name__ == "__main__":
    main()
