"""Benchmark: one SD3-medium-width joint block — stock SDPA vs our capture vs a naive full-softmax capture.

    .venv/bin/python benchmarks/attention_capture.py [--image-tokens 4096] [--text-tokens 154] [--repeats 3]

Prints median wall time and peak extra resident memory of one block forward for each variant — stock, our capture
(both directions, all text tokens; 8 class tokens; 8 class tokens with diagnostics) and naive — and the ratios. Peak
memory: Linux's VmHWM, reset through /proc/self/clear_refs before each
forward, minus the resident size just before it. The naive variant materialises softmax(QKᵀ/√d) over the whole
joint sequence, as the Seg4Diff and DAAM code do.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from diffusers import SD3Transformer2DModel

from seg4diff.capture.attention import capture_attention


class NaiveCaptureProcessor:
    """Full joint softmax materialised, then sliced (the approach we improve on)."""

    def __init__(self):
        self.kept = {}

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        b, n_image = hidden_states.shape[:2]
        split = lambda t: t.view(b, -1, attn.heads, t.shape[-1] // attn.heads).transpose(1, 2)  # noqa: E731
        q = torch.cat([split(attn.to_q(hidden_states)), split(attn.add_q_proj(encoder_hidden_states))], 2)
        k = torch.cat([split(attn.to_k(hidden_states)), split(attn.add_k_proj(encoder_hidden_states))], 2)
        v = torch.cat([split(attn.to_v(hidden_states)), split(attn.add_v_proj(encoder_hidden_states))], 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        self.kept = {
            "image_to_text": probs[:, :, :n_image, n_image:].clone(),
            "text_to_image": probs[:, :, n_image:, :n_image].clone(),
        }
        out = (probs @ v).transpose(1, 2).reshape(b, -1, attn.heads * q.shape[-1])
        hidden, text = out[:, :n_image], out[:, n_image:]
        return attn.to_out[1](attn.to_out[0](hidden)), text if attn.context_pre_only else attn.to_add_out(text)


def resident_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(run, repeats: int) -> tuple[float, float]:
    """Returns (median seconds, peak extra MiB) of `run()`."""
    run()  # warm-up
    times, peaks = [], []
    for _ in range(repeats):
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # reset VmHWM to the current resident size
        before = resident_kib("VmRSS")
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
        peaks.append((resident_kib("VmHWM") - before) / 1024)
    return statistics.median(times), max(peaks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-tokens", type=int, default=4096)
    parser.add_argument("--text-tokens", type=int, default=154)
    parser.add_argument("--heads", type=int, default=24)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    side = int(math.isqrt(args.image_tokens))
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=2 * side,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=args.head_dim,
        num_attention_heads=args.heads,
        joint_attention_dim=256,
        caption_projection_dim=args.heads * args.head_dim,
        pooled_projection_dim=256,
        pos_embed_max_size=side,
    ).eval()
    block = transformer.transformer_blocks[0]
    width = args.heads * args.head_dim
    hidden = torch.randn(1, side * side, width)
    text = torch.randn(1, args.text_tokens, width)
    temb = torch.randn(1, width)
    forward = lambda: block(hidden_states=hidden, encoder_hidden_states=text, temb=temb)  # noqa: E731
    stock_processor = block.attn.processor

    with torch.no_grad():
        stock = measure(forward, args.repeats)

        def ours(**options):
            def run():
                with capture_attention(transformer, layers=[0], **options) as cap:
                    forward()
                return cap

            return run

        capture = measure(ours(), args.repeats)
        class_tokens = measure(ours(text_tokens=list(range(1, 9))), args.repeats)
        diagnostics = measure(ours(text_tokens=list(range(1, 9)), diagnostics=True), args.repeats)
        block.attn.set_processor(NaiveCaptureProcessor())
        naive = measure(forward, args.repeats)
        block.attn.set_processor(stock_processor)

    print(
        f"one joint block: {side * side} image + {args.text_tokens} text tokens, {args.heads} heads x {args.head_dim}, "
        f"fp32, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"{'variant':<14}{'median s':>10}{'peak extra MiB':>16}")
    for name, (seconds, mib) in (
        ("stock", stock),
        ("capture", capture),
        ("8 tokens", class_tokens),
        ("+ diagnostics", diagnostics),
        ("naive", naive),
    ):
        print(f"{name:<14}{seconds:>10.3f}{mib:>16.0f}")
    print(
        f"capture / stock time  = {capture[0] / stock[0]:.3f}  (both directions, all {args.text_tokens} text tokens; "
        "goal <= 1.05)"
    )
    print(
        f"capture / stock time  = {class_tokens[0] / stock[0]:.3f}  (both directions, 8 class tokens, as extraction "
        "keeps; goal <= 1.05)"
    )
    print(
        f"capture / stock time  = {diagnostics[0] / stock[0]:.3f}  (8 class tokens + diagnostics: a second attention "
        "pass)"
    )
    print(f"naive / capture time  = {naive[0] / capture[0]:.2f}  (target >= 2)")
    naive_extra, capture_extra = naive[1] - stock[1], capture[1] - stock[1]
    print(
        f"memory beyond a plain forward: naive {naive_extra:.0f} MiB, capture {capture_extra:.0f} MiB, "
        f"ratio {naive_extra / max(capture_extra, 1.0):.1f}x  (target >= 10)"
    )


if __name__ == "__main__":
    main()
