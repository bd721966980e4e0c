"""Benchmark: end-to-end extraction throughput against the bare transformer forward, at SD3-medium width.

    .venv/bin/python benchmarks/extract_throughput.py [--samples 24] [--blocks 2]

A random SD3Transformer2DModel of SD3-medium's width (24 heads × 64) with a few blocks, inside a tiny SD3 pipeline
(VAE and text encoders small), on 128² Shapes images: 32 × 32 = 1,024 image tokens + 77 CLIP + 16 T5 text tokens.
End to end is `seg4diff.capture.extract.extract_range` — read the prepared store, encode images and prompts, seeded
noise,
forward with capture of every block (every class token: the tiny tokenizer splits most words into characters,
~30 tokens; both directions, every head), copy out, compressed zarr write —
over one σ; forward-only is the same transformer calls on inputs prepared beforehand. Prints samples/s of both and
`ratio=` (end to end / forward only), with and without the diagnostics (entropy needs a second attention pass).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import SD3Transformer2DModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import prepared_shapes  # noqa: E402
from tiny_pipelines import tiny_sd3_pipeline  # noqa: E402

from seg4diff.backbones.backbone import backbone_from_pipeline  # noqa: E402
from seg4diff.backbones.noise import sample_noise
from seg4diff.capture.extract import extract_range, open_or_create  # noqa: E402
from seg4diff.config import ExtractParams  # noqa: E402
from seg4diff.data.attention_store import StoreLayout  # noqa: E402
from seg4diff.data.prepared import open_prepared  # noqa: E402
from seg4diff.prompts import PromptStyle, build_prompt

STYLE = PromptStyle("gt_classes", " ", "word", "all")
SIGMA = 0.5


def wide_backbone(blocks: int):
    pipe = tiny_sd3_pipeline()
    torch.manual_seed(0)
    pipe.transformer = SD3Transformer2DModel(
        sample_size=64,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=blocks,
        attention_head_dim=64,
        num_attention_heads=24,
        joint_attention_dim=64,
        caption_projection_dim=1536,
        pooled_projection_dim=64,
        pos_embed_max_size=64,
    ).eval()
    return backbone_from_pipeline(pipe, text_length=16)


def forward_only(backbone, prepared, samples: int, batch: int, seed: int) -> float:
    """Seconds of the transformer calls alone over `samples` (inputs built before the clock starts)."""
    names = [str(n) for n in prepared["class_name"].values]
    rows = prepared.isel(sample=list(range(samples))).load()
    inputs = []
    with torch.no_grad():
        for start in range(0, samples, batch):
            part = list(range(start, min(start + batch, samples)))
            encoding = backbone.encode_prompts(
                [build_prompt(STYLE, rows["present"].values[k], names, "")[0] for k in part]
            )
            latents = backbone.encode_images(
                torch.from_numpy(rows["image"].values[part]).permute(0, 3, 1, 2).float() / 255
            )
            noise = torch.stack([sample_noise(latents.shape[1:], seed, i) for i in part])
            inputs.append(backbone.transformer_inputs(SIGMA * noise + (1 - SIGMA) * latents, SIGMA, encoding))
        started = time.perf_counter()
        for kwargs in inputs:
            backbone.transformer(**kwargs)
    return time.perf_counter() - started


def end_to_end(backbone, prepared, samples: int, params: ExtractParams, blocks: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "attention.zarr"
        heads = list(range(24))
        layout = StoreLayout(
            samples,
            list(range(blocks)),
            heads,
            [SIGMA],
            params.max_tokens,
            (32, 32),
            tuple(params.directions),
            params.diagnostics,
        )
        open_or_create(out, layout, {"fingerprint": "benchmark"})
        started = time.perf_counter()
        with torch.no_grad():
            extract_range(backbone, prepared, out, 0, samples, [SIGMA], list(range(blocks)), params, STYLE)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prepared_shapes(Path(tmp), ["val"], 128, 64, seed=0, num_val=args.samples)
        prepared = open_prepared(Path(tmp) / "val.zarr")
        backbone = wide_backbone(args.blocks)
        print(
            f"SD3-medium width, {args.blocks} blocks, 1024 image + 93 text tokens, batch {args.batch}, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}"
        )
        forward_only(backbone, prepared, args.batch, args.batch, 0)  # warm-up
        bare = forward_only(backbone, prepared, args.samples, args.batch, 0)
        print(f"forward only       {args.samples / bare:6.2f} samples/s")
        for diagnostics in (False, True):
            params = ExtractParams(
                sigmas=[SIGMA], max_tokens=64, batch_size=args.batch, diagnostics=diagnostics, seed=0
            )
            seconds = end_to_end(backbone, prepared, args.samples, params, args.blocks)
            print(
                f"end to end{' + diagnostics' if diagnostics else '               '} {args.samples / seconds:6.2f} "
                "samples/s  "
                f"ratio={bare / seconds:.3f}{'  (goal >= 0.85)' if not diagnostics else ''}"
            )


if __name__ == "__main__":
    main()
