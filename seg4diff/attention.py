"""Exact, memory-light capture of MM-DiT joint attention between image and text tokens.

    with capture_attention(transformer, layers=[9], text_tokens=positions) as cap:
        transformer(**inputs)
    cap.image_to_text   # xarray (batch, layer, head, image_token, text_token): softmax over ALL joint keys

Our processors replicate diffusers' stock SD3 / FLUX processors line for line, but take the attention output and
the per-row log-sum-exp over all keys from one fused kernel. Only the image×text and text×image logits that are
kept are formed, so the N×N joint matrix (and its image×image block) never exists.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import xarray as xr
from diffusers.models.embeddings import apply_rotary_emb

Direction = Literal["image_to_text", "text_to_image"]
DIRECTIONS: tuple[Direction, ...] = ("image_to_text", "text_to_image")
QUERY_CHUNK = 1024


def chunked_attention_with_lse(query, key, value, scale: float, chunk: int = QUERY_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (output, logsumexp) of softmax attention, (batch, head, query, ·), materialising chunk × keys at a time."""
    outputs, lses = [], []
    for start in range(0, query.shape[2], chunk):
        logits = torch.matmul(query[:, :, start:start + chunk], key.transpose(-1, -2)).float() * scale
        lse = torch.logsumexp(logits, dim=-1)
        outputs.append(torch.matmul(torch.exp(logits - lse[..., None]).to(value.dtype), value))
        lses.append(lse)
    return torch.cat(outputs, dim=2), torch.cat(lses, dim=2)


def _low_precision(query: torch.Tensor) -> bool:
    head_dim = query.shape[-1]
    return query.dtype in (torch.float16, torch.bfloat16) and head_dim % 8 == 0 and head_dim <= 256


_CUDA_KERNEL: dict[tuple, str] = {}  # (device, dtype, head dim) → the first kernel that ran there


def _cuda_attention_with_lse(query, key, value, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cuDNN's fused kernel (what stock SDPA picks on Hopper), else flash, else memory-efficient; each returns the lse."""
    setting = (query.device, query.dtype, query.shape[-1])
    candidates = ("cudnn", "flash", "efficient") if _low_precision(query) else ("efficient",)
    for kernel in candidates[candidates.index(_CUDA_KERNEL.get(setting, candidates[0])):]:
        try:
            if kernel == "cudnn":
                out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(query, key, value, None, True, 0.0, False, False, scale=scale)[:2]
            elif kernel == "flash":
                out, lse = torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, 0.0, False, False, scale=scale)[:2]
            else:
                out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, None, True, 0.0, False, scale=scale)[:2]
        except RuntimeError:  # this build, card or shape lacks the kernel: try the next one
            if kernel == candidates[-1]:
                raise
            continue
        _CUDA_KERNEL[setting] = kernel
        lse = lse.squeeze(-1) if lse.ndim == 4 else lse
        return out, lse[..., : query.shape[2]]
    raise AssertionError("unreachable")


def attention_with_lse(query, key, value, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (output, logsumexp over all keys) for (batch, head, seq, dim) inputs, from a fused kernel when there is one."""
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    if query.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, 0.0, False, scale=scale)
    if query.device.type == "cuda":
        return _cuda_attention_with_lse(query, key, value, scale)
    return chunked_attention_with_lse(query, key, value, scale)


@dataclass
class Recorder:
    """Collects, per captured layer, the requested slices of attention from inside the processors."""

    directions: tuple[Direction, ...]
    text_tokens: torch.Tensor | None  # (kept,) or (batch, kept) positions in the text sequence
    head_mean: bool
    output: Literal["probabilities", "logits"]
    detach: bool
    diagnostics: bool
    text_length: int | None = None  # set per forward (FLUX single-stream blocks see one joint sequence)
    grid: tuple[int, int] | None = None  # image tokens as (rows, columns), set per forward
    calls: int = 0  # forward passes seen (denoising steps when a whole generation is captured)
    records: dict[str, dict[int, list[torch.Tensor]]] = field(default_factory=dict)  # name → layer → one per call

    def _keep(self, text: torch.Tensor) -> torch.Tensor:
        """Returns the kept text rows of (batch, head, text, dim)."""
        if self.text_tokens is None:
            return text
        if self.text_tokens.device != text.device:  # moved once, not once per block (a host-to-device copy syncs)
            self.text_tokens = self.text_tokens.to(text.device)
        index = self.text_tokens
        if index.ndim == 1:
            return text[:, :, index]
        return torch.gather(text, 2, index[:, None, :, None].expand(-1, text.shape[1], -1, text.shape[-1]))

    def _store(self, name: str, layer: int, value: torch.Tensor) -> None:
        value = value.detach() if self.detach else value
        if self.head_mean:
            value = value.mean(dim=1, keepdim=True)
        self.records.setdefault(name, {}).setdefault(layer, []).append(value)

    def record(self, layer: int, query, key, value, lse, scale: float, text_slice: slice, image_slice: slice) -> None:
        """Forms the kept image×text / text×image logits from q, k and the kernel's log-sum-exp over all keys.

        The logits are formed in fp32 from fp32 copies of the (small) kept slices, whatever the model's dtype: a bf16
        product would round each score to 8 bits of mantissa before the softmax.
        """
        for direction in self.directions:
            if direction == "image_to_text":
                q, k, row_lse = query[:, :, image_slice], self._keep(key[:, :, text_slice]), lse[:, :, image_slice]
            else:
                q, k = self._keep(query[:, :, text_slice]), key[:, :, image_slice]
                row_lse = self._keep(lse[:, :, text_slice, None])[..., 0]
            logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
            self._store(direction, layer, logits if self.output == "logits" else torch.exp(logits - row_lse.float()[..., None]))
            if self.output == "logits" and direction == "image_to_text":  # the softmax denominators, to renormalise jointly
                self._store("image_lse", layer, row_lse.float())
        if self.diagnostics:
            self._diagnostics(layer, query, key, lse, scale, text_slice, image_slice)

    def _diagnostics(self, layer, query, key, lse, scale, text_slice, image_slice) -> None:
        """Per query row: attention mass on the other modality and the entropy of the full row, still without N×N.

        Entropy H = lse − Σ_j p_j·s_j, and Σ_j p_j·s_j = scale · q·(Σ_j p_j k_j) is attention with the keys as values.
        """
        with torch.no_grad():
            expected_key, _ = attention_with_lse(query, key, key, scale)
            entropy = lse.float() - scale * (query.float() * expected_key.float()).sum(-1)
            query, key = query.float(), key.float()
            k_text, k_image = key[:, :, text_slice], key[:, :, image_slice]
            to_text = torch.logsumexp(torch.matmul(query[:, :, image_slice], k_text.transpose(-1, -2)) * scale, -1)
            to_image = torch.logsumexp(torch.matmul(query[:, :, text_slice], k_image.transpose(-1, -2)) * scale, -1)
            self._store("image_entropy", layer, entropy[:, :, image_slice])
            self._store("text_entropy", layer, self._keep(entropy[:, :, text_slice, None])[..., 0])
            self._store("image_to_text_mass", layer, torch.exp(to_text - lse[:, :, image_slice].float()))
            self._store("text_to_image_mass", layer, self._keep(torch.exp(to_image - lse[:, :, text_slice].float())[..., None])[..., 0])


def sd3_joint_qkv(attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None, layer: int):
    """Returns (query, key, value) of SD3's joint attention, (batch, head, image + text, dim), as JointAttnProcessor2_0."""
    batch_size = hidden_states.shape[0]
    query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (t.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    if encoder_hidden_states is None:
        raise ValueError(f"block {layer}: joint attention needs encoder_hidden_states (text tokens)")
    text_q, text_k, text_v = (p(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
                              for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
    if attn.norm_added_q is not None:
        text_q = attn.norm_added_q(text_q)
    if attn.norm_added_k is not None:
        text_k = attn.norm_added_k(text_k)
    return torch.cat([query, text_q], dim=2), torch.cat([key, text_k], dim=2), torch.cat([value, text_v], dim=2)


def sd3_joint_output(attn, out: torch.Tensor, n_image: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (image, text) hidden states from the joint attention output (batch, head, image + text, dim)."""
    batch_size, heads, _, head_dim = out.shape
    out = out.transpose(1, 2).reshape(batch_size, -1, heads * head_dim).to(dtype)
    hidden_states, encoder_hidden_states = out[:, :n_image], out[:, n_image:]
    if not attn.context_pre_only:
        encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
    return attn.to_out[1](attn.to_out[0](hidden_states)), encoder_hidden_states


class SD3CaptureProcessor:
    """diffusers' JointAttnProcessor2_0 (SD3, SD3.5) with the attention taken from `attention_with_lse`."""

    def __init__(self, layer: int, recorder: Recorder):
        self.layer, self.recorder = layer, recorder

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        query, key, value = sd3_joint_qkv(attn, hidden_states, encoder_hidden_states, self.layer)
        scale = 1 / math.sqrt(query.shape[-1])
        out, lse = attention_with_lse(query, key, value, scale)
        n_image = hidden_states.shape[1]
        self.recorder.record(self.layer, query, key, value, lse, scale, slice(n_image, None), slice(0, n_image))
        return sd3_joint_output(attn, out, n_image, query.dtype)


class FluxCaptureProcessor:
    """diffusers' FluxAttnProcessor (double- and single-stream blocks), joint order [text, image]."""

    def __init__(self, layer: int, recorder: Recorder):
        self.layer, self.recorder = layer, recorder

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        query, key, value, double_stream = flux_joint_qkv(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        n_text = encoder_hidden_states.shape[1] if double_stream else self.recorder.text_length
        scale = 1 / math.sqrt(attn.head_dim)
        out, lse = attention_with_lse(query, key, value, scale)
        self.recorder.record(self.layer, query, key, value, lse, scale, slice(0, n_text), slice(n_text, None))
        return flux_joint_output(attn, out, n_text, double_stream, query.dtype)


def flux_joint_qkv(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb):
    """Returns (query, key, value) of a FLUX block's joint attention, (batch, head, text + image, dim), as
    FluxAttnProcessor, and whether the block is double-stream (a single-stream block gets the joint sequence)."""
    if attention_mask is not None:
        raise NotImplementedError("FLUX attention masks are not supported by seg4diff's attention processors")
    from diffusers.models.transformers.transformer_flux import _get_qkv_projections

    query, key, value, text_q, text_k, text_v = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
    query, key, value = (t.unflatten(-1, (-1, attn.head_dim)) for t in (query, key, value))
    query, key = attn.norm_q(query), attn.norm_k(key)
    double_stream = attn.added_kv_proj_dim is not None
    if double_stream:
        text_q, text_k, text_v = (t.unflatten(-1, (-1, attn.head_dim)) for t in (text_q, text_k, text_v))
        text_q, text_k = attn.norm_added_q(text_q), attn.norm_added_k(text_k)
        query, key, value = torch.cat([text_q, query], dim=1), torch.cat([text_k, key], dim=1), torch.cat([text_v, value], dim=1)
    if image_rotary_emb is not None:
        query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
        key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
    return query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), double_stream


def flux_joint_output(attn, out: torch.Tensor, n_text: int, double_stream: bool, dtype: torch.dtype):
    """Returns a FLUX block's attention result from the joint output (batch, head, text + image, dim): (image, text)
    hidden states for a double-stream block, the joint sequence for a single-stream one."""
    out = out.transpose(1, 2).flatten(2, 3).to(dtype)
    if double_stream:
        encoder_hidden_states, hidden_states = out.split_with_sizes([n_text, out.shape[1] - n_text], dim=1)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
        return hidden_states, attn.to_add_out(encoder_hidden_states.contiguous())
    return out


def joint_attention_modules(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """Returns the joint (image+text) attention module of every block, in depth order.

    SD3/SD3.5: `transformer_blocks[i].attn` (attn2 of dual-attention blocks is image-only and left alone).
    FLUX: double-stream blocks, then single-stream blocks.
    """
    blocks = list(transformer.transformer_blocks) + list(getattr(transformer, "single_transformer_blocks", []))
    return [block.attn for block in blocks]


def _processor_class(transformer: torch.nn.Module):
    name = type(transformer).__name__
    if name == "SD3Transformer2DModel":
        return SD3CaptureProcessor
    if name == "FluxTransformer2DModel":
        return FluxCaptureProcessor
    raise TypeError(f"attention capture supports SD3Transformer2DModel and FluxTransformer2DModel, not {name}")


def _unflatten(array: xr.DataArray, dim: str, grid: tuple[int, int]) -> xr.DataArray:
    """Returns `array` with its `dim` axis (row-major image tokens) split into (y, x)."""
    axis = array.dims.index(dim)
    values = array.values.reshape(array.shape[:axis] + tuple(grid) + array.shape[axis + 1:])
    coords = {name: coord for name, coord in array.coords.items() if dim not in coord.dims}
    return xr.DataArray(values, dims=array.dims[:axis] + ("y", "x") + array.dims[axis + 1:], coords=coords, name=array.name)


@dataclass
class AttentionCapture:
    """What a capture recorded: per direction a (batch, layer, head, query, key) tensor per forward pass.

    One forward inside the capture gives exactly those dims; several (a whole denoising loop, `pipe(prompt)`) add a
    leading `step` dim, one entry per call, in call order.
    """

    layers: list[int]
    recorder: Recorder

    @property
    def steps(self) -> int:
        """Forward passes recorded."""
        return self.recorder.calls

    def tensor(self, name: str, step: int | None = None) -> torch.Tensor:
        """Returns the record `name` stacked over layers: (batch, layer, head, ...) for one forward (or `step`),
        (step, batch, layer, head, ...) for several — with gradients if not detached."""
        if name not in self.recorder.records:
            raise KeyError(f"nothing recorded for '{name}': was the transformer called inside the capture, with it requested?")
        per_layer = self.recorder.records[name]
        calls = len(per_layer[self.layers[0]])
        if step is not None:
            return torch.stack([per_layer[layer][step] for layer in self.layers], dim=1)
        per_call = [torch.stack([per_layer[layer][call] for layer in self.layers], dim=1) for call in range(calls)]
        return per_call[0] if calls == 1 else torch.stack(per_call)

    def _array(self, name: str, dims: tuple[str, ...]) -> xr.DataArray:
        values = self.tensor(name)
        dims = (("step",) if values.ndim > len(dims) else ()) + dims
        head = [-1] if self.recorder.head_mean else list(range(values.shape[dims.index("head")]))
        return xr.DataArray(values.detach().float().cpu().numpy(), dims=dims, name=name,
                            coords={"layer": self.layers, "head": head})

    @property
    def image_to_text(self) -> xr.DataArray:
        return self._array("image_to_text", ("batch", "layer", "head", "image_token", "text_token"))

    @property
    def text_to_image(self) -> xr.DataArray:
        return self._array("text_to_image", ("batch", "layer", "head", "text_token", "image_token"))

    def maps(self, direction: Direction = "image_to_text") -> xr.DataArray:
        """Returns the direction's attention with the image tokens laid out on the token grid as (y, x)."""
        if self.recorder.grid is None:
            raise ValueError("the image token grid is unknown: the transformer was not called with image latents")
        return _unflatten(getattr(self, direction), "image_token", self.recorder.grid)

    def diagnostic(self, name: str) -> xr.DataArray:
        """image_entropy / image_to_text_mass (…, image_token) or text_entropy / text_to_image_mass (…, text_token)."""
        return self._array(name, ("batch", "layer", "head", "image_token" if name.startswith("image") else "text_token"))


def _token_grid(transformer: torch.nn.Module, kwargs: dict, args: tuple) -> tuple[int, int] | None:
    """Returns the image token grid of one forward call: SD3 from the latent's (H, W), FLUX from its image ids."""
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    if hidden is not None and hidden.ndim == 4:
        patch = transformer.config.patch_size
        return hidden.shape[-2] // patch, hidden.shape[-1] // patch
    ids = kwargs.get("img_ids")
    if ids is not None:
        ids = ids.reshape(-1, ids.shape[-1])
        return int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
    return None


@contextlib.contextmanager
def capture_attention(transformer: torch.nn.Module, layers: Sequence[int] | None = None,
                      directions: Sequence[Direction] = DIRECTIONS, text_tokens: Sequence[int] | torch.Tensor | None = None,
                      head_mean: bool = False, output: Literal["probabilities", "logits"] = "probabilities",
                      detach: bool = True, diagnostics: bool = False) -> Iterator[AttentionCapture]:
    """Installs capture processors on `layers` (None: every block) and restores the originals on exit, even on error.

    `text_tokens`: positions in the text sequence to keep, (kept,) for the whole batch or (batch, kept) per sample.
    `output="logits"` keeps the pre-softmax scores (for losses) and, as `image_lse`, each image query's log-sum-exp
    over all joint keys (logit − image_lse is the log-probability); `detach=False` keeps their graph.
    Every forward inside the capture is kept (a `step` dim when there are several): to wrap a whole generation at
    full size, bound the memory with `layers`, `text_tokens` and `head_mean`.
    """
    processor_class = _processor_class(transformer)
    modules = joint_attention_modules(transformer)
    layers = list(range(len(modules))) if layers is None else [int(layer) for layer in layers]
    bad = [layer for layer in layers if not 0 <= layer < len(modules)]
    if bad:
        raise IndexError(f"layers {bad} out of range: the transformer has {len(modules)} joint-attention blocks")
    unknown = set(directions) - set(DIRECTIONS)
    if unknown:
        raise ValueError(f"unknown directions {sorted(unknown)}; choose from {DIRECTIONS}")
    index = None if text_tokens is None else torch.as_tensor(text_tokens, dtype=torch.long)
    recorder = Recorder(tuple(directions), index, head_mean, output, detach, diagnostics)

    def note_call(module, args, kwargs):
        text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        recorder.text_length = None if text is None else text.shape[1]
        recorder.grid = _token_grid(module, kwargs, args)
        recorder.calls += 1

    originals = {layer: modules[layer].processor for layer in layers}
    hook = transformer.register_forward_pre_hook(note_call, with_kwargs=True)
    try:
        for layer in layers:  # one instance per layer: a shared instance would not know its layer
            modules[layer].set_processor(processor_class(layer, recorder))
        yield AttentionCapture(layers, recorder)
    finally:
        hook.remove()
        for layer, processor in originals.items():
            modules[layer].set_processor(processor)
