"""GPU benchmark: attention capture on random-weight transformers of SD3-medium's and FLUX.1-dev's real sizes.

    python benchmarks/gpu.py                   # on a CUDA machine, bf16, about 3 minutes on an H100/H200
    python benchmarks/gpu.py --device cpu --small   # the same code paths at toy sizes (what the test suite runs)

Prints, in one run on one device:
1. exactness: captured probabilities (both directions, diagnostics on) against a naive fp32 softmax(QKᵀ/√d) built from
   each block's own projections (run in the same dtype, so only the capture's arithmetic differs), SD3 and FLUX
   (double and single stream), in fp32 and in bf16;
2. the fused kernel's log-sum-exp: flash vs memory-efficient, one joint attention call at full size;
3. SD3-medium (24 blocks, 24 heads × 64, 4096 image + 154 text tokens): stock forward vs capture of every block
   (8 class tokens, both directions, per head; with diagnostics; all 154 text tokens) vs a naive full-softmax
   capture (batch 1) — median seconds, images/s, peak GPU memory beyond the stock forward;
4. FLUX.1-dev width (24 heads × 128, 4096 image + 512 text tokens), a few double- and single-stream blocks: same.
Every timing line ends with `ratio=` (capture time / stock time).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from attention_capture import NaiveCaptureProcessor
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from diffusers.utils import logging as diffusers_logging

from seg4diff.capture.attention import capture_attention
from seg4diff.capture.families import joint_attention_modules
from seg4diff.capture.kernels import _CUDA_KERNEL, attention_with_lse
from seg4diff.testing.reference import naive_flux_attention, naive_sd3_attention


def sd3_model(
    layers: int, heads: int, head_dim: int, side: int, joint_dim: int, pooled_dim: int
) -> SD3Transformer2DModel:
    return SD3Transformer2DModel(
        sample_size=2 * side,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=layers,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=joint_dim,
        caption_projection_dim=heads * head_dim,
        pooled_projection_dim=pooled_dim,
        pos_embed_max_size=max(side, 16),
    )


def sd3_inputs(model: SD3Transformer2DModel, batch: int, side: int, text: int, device, dtype) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)
    c = model.config
    make = lambda *shape: torch.randn(*shape, generator=g).to(device, dtype)  # noqa: E731
    return {
        "hidden_states": make(batch, 16, 2 * side, 2 * side),
        "encoder_hidden_states": make(batch, text, c.joint_attention_dim),
        "pooled_projections": make(batch, c.pooled_projection_dim),
        "timestep": torch.full((batch,), 500.0, device=device),
        "return_dict": False,
    }


def flux_model(
    double: int, single: int, heads: int, head_dim: int, joint_dim: int, rope: tuple[int, int, int]
) -> FluxTransformer2DModel:
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=double,
        num_single_layers=single,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=joint_dim,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=rope,
    )


def flux_inputs(model: FluxTransformer2DModel, batch: int, side: int, text: int, device, dtype) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)
    make = lambda *shape: torch.randn(*shape, generator=g).to(device, dtype)  # noqa: E731
    ids = torch.zeros(side, side, 3)
    ids[..., 1] += torch.arange(side)[:, None]
    ids[..., 2] += torch.arange(side)[None, :]
    return {
        "hidden_states": make(batch, side * side, 64),
        "encoder_hidden_states": make(batch, text, model.config.joint_attention_dim),
        "pooled_projections": make(batch, 768),
        "timestep": torch.full((batch,), 0.5, device=device),
        "guidance": torch.full((batch,), 3.5, device=device),
        "img_ids": ids.reshape(-1, 3).to(device),
        "txt_ids": torch.zeros(text, 3, device=device),
        "return_dict": False,
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float]:
    """Returns (median seconds, peak GPU MiB allocated during a run; 0 on CPU) after one warm-up."""
    run()
    sync(device)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return statistics.median(times), peak


def _kept_inputs(model) -> tuple[dict, list]:
    """Runs a stock forward, returning each joint attention module's kwargs (hooked)."""
    seen: dict = {}
    handles = [
        m.register_forward_hook(lambda mod, args, kwargs, out, i=i: seen.__setitem__(i, kwargs), with_kwargs=True)
        for i, m in enumerate(joint_attention_modules(model))
    ]
    return seen, handles


def exactness(name: str, model, inputs: dict, text: int, dtype: torch.dtype) -> None:
    """Prints the max |captured − naive fp32| over every block, both directions, and the rows' total mass error."""
    seen, handles = _kept_inputs(model)
    with torch.no_grad(), capture_attention(model, diagnostics=True) as cap:
        model(**inputs)
    for h in handles:
        h.remove()
    i2t, t2i = cap.tensor("image_to_text"), cap.tensor("text_to_image")
    worst, worst_mass = 0.0, 0.0
    modules = joint_attention_modules(model)
    with torch.no_grad():
        for layer, kwargs in seen.items():
            attn = modules[layer]
            if name == "flux":
                probs = naive_flux_attention(
                    attn, kwargs["hidden_states"], kwargs.get("encoder_hidden_states"), kwargs["image_rotary_emb"]
                )
                ref_i2t, ref_t2i = probs[:, :, text:, :text], probs[:, :, :text, text:]
            else:
                n = kwargs["hidden_states"].shape[1]
                probs = naive_sd3_attention(attn, kwargs["hidden_states"], kwargs["encoder_hidden_states"])
                ref_i2t, ref_t2i = probs[:, :, :n, n:], probs[:, :, n:, :n]
            worst = max(
                worst, (i2t[:, layer] - ref_i2t).abs().max().item(), (t2i[:, layer] - ref_t2i).abs().max().item()
            )
            mass = cap.tensor("image_to_text_mass")[:, layer] - ref_i2t.sum(-1)
            worst_mass = max(worst_mass, mass.abs().max().item())
    print(
        f"exactness {name:<5} {str(dtype).split('.')[-1]:<8} blocks={len(seen)} max_abs_err={worst:.2e} "
        f"text_mass_err={worst_mass:.2e}"
    )


def capture_variants(model, inputs: dict, kept_tokens: int, device, repeats: int, label: str, naive: bool) -> None:
    """Times the stock forward and each capture variant; prints seconds, images/s, extra peak MiB, ratio."""
    batch = inputs["hidden_states"].shape[0]
    tokens = list(range(1, kept_tokens + 1))

    def capture(**options):
        def run():
            with capture_attention(model, **options) as cap:
                model(**inputs)
            return cap

        return run

    with torch.no_grad():
        stock = timed(lambda: model(**inputs), device, repeats)
        variants = {
            "capture 8 tokens": capture(text_tokens=tokens),
            "capture 8 tokens + diagnostics": capture(text_tokens=tokens, diagnostics=True),
            "capture head mean, 8 tokens": capture(text_tokens=tokens, head_mean=True),
            "capture all text tokens": capture(),
        }
        results = {name: timed(run, device, repeats) for name, run in variants.items()}
        if naive:
            modules = joint_attention_modules(model)
            stock_processors = [m.processor for m in modules]
            for m in modules:
                m.set_processor(NaiveCaptureProcessor())
            results["naive full softmax"] = timed(lambda: model(**inputs), device, repeats)
            for m, processor in zip(modules, stock_processors):
                m.set_processor(processor)
    print(f"{label}: batch {batch}")
    print(f"  {'stock':<34}{stock[0]:>8.4f} s {batch / stock[0]:>8.2f} img/s  peak {stock[1]:>8.0f} MiB")
    for name, (seconds, peak) in results.items():
        print(
            f"  {name:<34}{seconds:>8.4f} s {batch / seconds:>8.2f} img/s  extra {peak - stock[1]:>7.0f} MiB  "
            f"ratio={seconds / stock[0]:.3f}"
        )


def profile_capture(model, inputs: dict, device, kept_tokens: int) -> None:
    """Prints the operators that take the most device time in one stock and one captured forward."""
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else []
    )
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    for label, options in (("stock", None), ("capture 8 tokens", {"text_tokens": list(range(1, kept_tokens + 1))})):
        with torch.no_grad(), torch.profiler.profile(activities=activities) as prof:
            if options is None:
                model(**inputs)
            else:
                with capture_attention(model, **options):
                    model(**inputs)
            sync(device)
        print(f"profile, {label}:")
        print(prof.key_averages().table(sort_by=sort, row_limit=14, max_name_column_width=60))


def kernel_lse(device, dtype, heads: int, tokens: int, head_dim: int, repeats: int) -> None:
    """Times the flash and the memory-efficient kernels' (output, log-sum-exp) on one joint attention call."""
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(1, heads, tokens, head_dim, generator=g).to(device, dtype) for _ in range(3))
    scale = head_dim**-0.5
    with torch.no_grad():
        ours = timed(lambda: attention_with_lse(q, k, v, scale), device, repeats)
        sdpa = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), device, repeats)
        line = (
            f"kernel {heads}x{tokens}x{head_dim} {str(dtype).split('.')[-1]}: "
            f"stock sdpa {sdpa[0] * 1e3:.3f} ms, ours {ours[0] * 1e3:.3f} ms"
        )
        if device.type == "cuda":
            eff = timed(
                lambda: torch.ops.aten._scaled_dot_product_efficient_attention(
                    q, k, v, None, True, 0.0, False, scale=scale
                ),
                device,
                repeats,
            )
            flash = timed(
                lambda: torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale),
                device,
                repeats,
            )
            _, lse_ours = attention_with_lse(q, k, v, scale)
            lse_eff = torch.ops.aten._scaled_dot_product_efficient_attention(
                q, k, v, None, True, 0.0, False, scale=scale
            )[1][..., :tokens]
            kernel = _CUDA_KERNEL[(q.device, q.dtype, head_dim)]
            line += (
                f" ({kernel}), flash+lse {flash[0] * 1e3:.3f} ms, efficient+lse {eff[0] * 1e3:.3f} ms "
                f"(efficient/flash={eff[0] / flash[0]:.2f}), "
                f"lse ours vs efficient max diff {(lse_ours - lse_eff).abs().max().item():.1e}"
            )
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="toy sizes (CPU check of every code path)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument(
        "--profile", action="store_true", help="print the top operators of a stock and a captured SD3 forward"
    )
    parser.add_argument("--flux-blocks", type=int, nargs=2, default=(4, 8), metavar=("DOUBLE", "SINGLE"))
    args = parser.parse_args()
    device = torch.device(args.device)
    diffusers_logging.set_verbosity_error()
    fast_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, model dtype {str(fast_dtype).split('.')[-1]}")

    # 1. exactness at a small size, fp32 and the fast dtype
    for dtype in dict.fromkeys((torch.float32, fast_dtype)):
        sd3 = sd3_model(3, 4, 64, 12, 256, 256).to(device, dtype).eval()
        exactness("sd3", sd3, sd3_inputs(sd3, 2, 12, 20, device, dtype), 20, dtype)
        flux = flux_model(2, 2, 4, 64, 256, (8, 28, 28)).to(device, dtype).eval()
        exactness("flux", flux, flux_inputs(flux, 2, 12, 20, device, dtype), 20, dtype)
    del sd3, flux

    # 2-4. full sizes (or toy sizes with --small)
    if args.small:
        sd3_size, flux_size, side, repeats = (2, 4, 64, 256, 256), (1, 1, 4, 64, 256, (8, 28, 28)), 8, 2
        sd3_text, flux_text = 20, 20
    else:
        sd3_size, flux_size, side, repeats = (
            (24, 24, 64, 4096, 2048),
            (*args.flux_blocks, 24, 128, 4096, (16, 56, 56)),
            64,
            args.repeats,
        )
        sd3_text, flux_text = 154, 512
    kernel_lse(device, fast_dtype, sd3_size[1], side * side + sd3_text, sd3_size[2], repeats)
    kernel_lse(device, fast_dtype, flux_size[2], side * side + flux_text, flux_size[3], repeats)
    with torch.device(device):
        sd3 = sd3_model(sd3_size[0], sd3_size[1], sd3_size[2], side, sd3_size[3], sd3_size[4]).to(fast_dtype).eval()
    params = sum(p.numel() for p in sd3.parameters()) / 1e9
    for batch in dict.fromkeys((1, args.batch)):
        capture_variants(
            sd3,
            sd3_inputs(sd3, batch, side, sd3_text, device, fast_dtype),
            8,
            device,
            repeats,
            f"SD3-medium size ({sd3_size[0]} blocks, {params:.2f} B params, {side * side}+{sd3_text} tokens)",
            naive=batch == 1,
        )
    if args.profile:
        profile_capture(sd3, sd3_inputs(sd3, 1, side, sd3_text, device, fast_dtype), device, 8)
    del sd3
    with torch.device(device):
        flux = flux_model(*flux_size).to(fast_dtype).eval()
    capture_variants(
        flux,
        flux_inputs(flux, 1, side, flux_text, device, fast_dtype),
        8,
        device,
        repeats,
        f"FLUX.1-dev width ({flux_size[0]} double + {flux_size[1]} single blocks, {side * side}+{flux_text} tokens)",
        naive=False,
    )


if __name__ == "__main__":
    main()
