"""One mechanism for reading and editing a layer's joint attention: the layer's own attention kernel call, tapped.

    with intervene(transformer, [2], perturbation), intervene(transformer, [2], recorder):
        transformer(**inputs)   # layer 2 perturbed, and its recorder sees the perturbed attention

The stock diffusers processor runs unchanged. While a hooked layer's attention module runs, a torch function mode
(`KernelTap`) catches its `scaled_dot_product_attention` call — the processor's own, or the one diffusers' native
attention backend makes — with the query, key and value exactly as the processor formed them (projections, norms,
rotary embeddings, mask). The tap computes the attention with `attention_with_lse` (the output and each query row's
log-sum-exp over all joint keys, from a fused kernel), hands the hooks one `JointAttention` — editors first, in the
order they came, then observers, so an observer records what the layer used whatever the nesting — and returns the
(edited) output to the processor. Which keys are image and which text is read from the call's key length, the
forward's image token count and the family's token order (`seg4diff.capture.families`); no processor is copied.
On exit each context takes its hook off again, even on error.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from seg4diff.capture.families import Family, Grid, family_of
from seg4diff.capture.kernels import additive_bias, attention_with_lse


class JointAttention:
    """One layer's joint attention in one forward, as hooks see it: query, key, value (batch, head, token, dim) as the
    kernel got them, the additive `bias` (mask) or None, the kernel's output and per-row log-sum-exp over ALL joint
    keys, the image and text key slices, and the query rows of each (`text_rows` None where only image tokens
    query). Editors change `out` through `edit_image_to_text`; observers read `image_to_text()`."""

    def __init__(self, layer: int, query, key, value, bias, out, lse, scale: float, image: slice, text: slice, rows):
        self.layer, self.query, self.key, self.value, self.bias = layer, query, key, value, bias
        self.out, self.lse, self.scale, self.image, self.text = out, lse, scale, image, text
        self.image_rows, self.text_rows = rows
        self._unedited: torch.Tensor | None = None  # image→text probabilities of the stock attention
        self._image_to_text: torch.Tensor | None = None  # … of the attention the layer uses now

    def scores(self, rows: slice, keys: slice, query: torch.Tensor | None = None) -> torch.Tensor:
        """Returns the fp32 logits (batch, head, row, key) of query `rows` × `keys`, mask included (`query`: those
        rows already taken, e.g. a subset of text rows)."""
        query = self.query[:, :, rows] if query is None else query
        logits = torch.matmul(query.float(), self.key[:, :, keys].float().transpose(-1, -2)) * self.scale
        if self.bias is not None:
            bias = self.bias.expand(*self.query.shape[:3], self.key.shape[2])[:, :, rows, keys]
            logits = logits + bias.float()
        return logits

    def image_to_text(self) -> torch.Tensor:
        """Returns the (batch, head, image query, text key) fp32 probabilities the layer uses now (softmax over all
        joint keys), formed from q, k and the log-sum-exp only."""
        if self._image_to_text is None:
            logits = self.scores(self.image_rows, self.text)
            self._unedited = self._image_to_text = torch.exp(logits - self.lse[:, :, self.image_rows, None].float())
        return self._image_to_text

    def edit_image_to_text(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Makes the layer use `probabilities` as its image→text attention; returns the change from what it used.

        The output's image rows are corrected by (P' − P)·V_text: the image→image part is left as it was, so each
        image query's text mass should be kept."""
        delta = probabilities - self.image_to_text()
        out = self.out.clone()
        out[:, :, self.image_rows] += torch.matmul(delta, self.value[:, :, self.text].float()).to(out.dtype)
        self.out, self._image_to_text = out, probabilities
        return delta

    @property
    def edited(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(stock, used) image→text probabilities if an editor changed them, else None."""
        if self._image_to_text is self._unedited:
            return None
        return self._unedited, self._image_to_text


class Intervention:
    """What one context hooks on some layers. `intervene` sets, at the start of every forward inside it, the forward's
    token `grid` (rows, columns) and the count `forwards`, then calls `forward_started()`; each hooked layer then
    calls the intervention with its `JointAttention`. Editors (`edits = True`) run before observers."""

    edits: ClassVar[bool] = False
    grid: Grid | None
    forwards: int
    _installed: bool = False  # the "already hooked" guard: one intervention is installed by one context at a time

    def forward_started(self) -> None:
        """Called once per forward, after grid and forwards are set."""

    def __call__(self, attention: JointAttention) -> None:
        raise NotImplementedError


class KernelTap(TorchFunctionMode):
    """Active while one hooked layer's attention module runs: its first `scaled_dot_product_attention` call is
    computed here and handed to the layer's hooks; any later call in the same module runs as it was."""

    def __init__(self, site: LayerSite):
        super().__init__()
        self.site, self.calls = site, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention or self.calls:
            return func(*args, **kwargs)
        self.calls += 1
        return self.site.attend(*args, **kwargs)


class LayerSite:
    """One layer's joint-attention module with the interventions hooked on it (while any are)."""

    def __init__(self, family: Family, layer: int, module: torch.nn.Module):
        self.family, self.layer, self.module = family, layer, module
        self.hooks: list[Intervention] = []
        self._taps: list[KernelTap] = []
        self._handles = [
            module.register_forward_pre_hook(self._enter),
            module.register_forward_hook(self._exit, always_call=True),
        ]

    def _enter(self, module, args) -> None:
        tap = KernelTap(self)
        self._taps.append(tap)
        tap.__enter__()

    def _exit(self, module, args, output) -> None:
        tap = self._taps.pop()
        tap.__exit__(None, None, None)
        if not tap.calls:
            raise RuntimeError(
                f"layer {self.layer}'s attention ({type(module).__name__}) made no torch scaled_dot_product_attention "
                "call: seg4diff reads the stock kernel call, so run the model with diffusers' native attention backend "
                "(no set_attention_backend / DIFFUSERS_ATTN_BACKEND other than 'native')"
            )

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def attend(
        self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
    ) -> torch.Tensor:
        """Computes the layer's attention (batch, head, token, dim) with its hooks, as the stock call would."""
        if dropout_p or is_causal or enable_gqa:
            raise NotImplementedError(
                f"layer {self.layer}: seg4diff reads non-causal attention without dropout or grouped queries "
                f"(got dropout_p={dropout_p}, is_causal={is_causal}, enable_gqa={enable_gqa}); call the model in eval "
                "mode"
            )
        grid = self.hooks[0].grid  # every hook was installed before this forward began: they agree
        if grid is None:
            raise ValueError(
                f"layer {self.layer}: the forward's image token grid is unknown, so its tokens cannot be split"
            )
        image, text, rows = self.family.split(query.shape[2], key.shape[2], grid[0] * grid[1], self.layer)
        scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
        bias = additive_bias(attn_mask, query.dtype)
        out, lse = attention_with_lse(query, key, value, scale, bias)
        attention = JointAttention(self.layer, query, key, value, bias, out, lse, scale, image, text, rows)
        for hook in [h for h in self.hooks if h.edits] + [h for h in self.hooks if not h.edits]:
            hook(attention)
        return attention.out


def check_layers(layers: Sequence[int], modules: Sequence[torch.nn.Module]) -> list[int]:
    """Returns `layers` as ints, or raises IndexError naming those the transformer does not have."""
    layers = [int(layer) for layer in layers]
    bad = [layer for layer in layers if not 0 <= layer < len(modules)]
    if bad:
        raise IndexError(f"layers {bad} out of range: the transformer has {len(modules)} joint-attention layers")
    return layers


_SITES: dict[int, LayerSite] = {}  # id(attention module) → its site, while an intervention is hooked there


@contextlib.contextmanager
def intervene(
    transformer: torch.nn.Module, layers: Sequence[int], intervention: Intervention
) -> Iterator[Intervention]:
    """Hooks `intervention` on `layers` (numbered as `joint_attention_modules`) for every forward inside the context,
    stacked on whatever interventions are already there; takes it off on exit, even on error."""
    family = family_of(transformer)
    modules = family.modules(transformer)
    layers = list(dict.fromkeys(check_layers(layers, modules)))
    if intervention._installed:
        raise RuntimeError(f"this {type(intervention).__name__} is already installed: leave its context first")

    def note_forward(module, args, kwargs):
        intervention.grid = family.token_grid(module, args, kwargs)
        intervention.forwards += 1
        intervention.forward_started()

    sites: list[LayerSite] = []
    hook = transformer.register_forward_pre_hook(note_forward, with_kwargs=True)
    intervention._installed = True
    try:
        for layer in layers:
            site = _SITES.get(id(modules[layer]))
            if site is None:
                site = _SITES[id(modules[layer])] = LayerSite(family, layer, modules[layer])
            site.hooks.append(intervention)
            sites.append(site)
        yield intervention
    finally:
        hook.remove()
        for site in reversed(sites):
            del site.hooks[next(i for i, h in enumerate(site.hooks) if h is intervention)]
            if not site.hooks:
                site.remove()
                del _SITES[id(site.module)]
        intervention._installed = False


def interventions_on(module: torch.nn.Module) -> list[Intervention]:
    """Returns the interventions hooked on this attention module now (editors and observers, in arrival order)."""
    site = _SITES.get(id(module))
    return [] if site is None else list(site.hooks)
