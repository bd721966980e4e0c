"""One mechanism for reading and editing a layer's joint attention: interventions hooked on one processor per layer.

    with intervene(transformer, [2], perturbation), intervene(transformer, [2], recorder):
        transformer(**inputs)   # layer 2 perturbed, and its recorder sees the perturbed attention

`intervene` puts an `InterventionProcessor` (its family's stock processor, with the attention taken from
`attention_with_lse`) on each layer, or, where one is already there, adds the intervention to its hooks. At every
call the processor hands the hooks one `JointAttention`: editors first, in the order they came, then observers, so
an observer records what the layer used whatever the nesting. On exit each context takes its hook off again, even on
error, and the last one to leave a layer puts back the processor that was there before the first.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import ClassVar

import torch

from seg4diff.capture.families import Family, Grid, family_of
from seg4diff.capture.kernels import attention_with_lse


class JointAttention:
    """One layer's joint attention in one forward, as hooks see it: query, key, value (batch, head, joint token, dim)
    in the family's order, the kernel's output and per-row log-sum-exp over ALL joint keys, and the image and text
    token slices. Editors change `out` through `edit_image_to_text`; observers read `image_to_text()`."""

    def __init__(self, layer: int, query, key, value, out, lse, scale: float, image: slice, text: slice):
        self.layer, self.query, self.key, self.value = layer, query, key, value
        self.out, self.lse, self.scale, self.image, self.text = out, lse, scale, image, text
        self._unedited: torch.Tensor | None = None  # image→text probabilities of the stock attention
        self._image_to_text: torch.Tensor | None = None  # … of the attention the layer uses now

    def image_to_text(self) -> torch.Tensor:
        """Returns the (batch, head, image query, text key) fp32 probabilities the layer uses now (softmax over all
        joint keys), formed from q, k and the log-sum-exp only."""
        if self._image_to_text is None:
            logits = (
                torch.matmul(self.query[:, :, self.image].float(), self.key[:, :, self.text].float().transpose(-1, -2))
                * self.scale
            )
            self._unedited = self._image_to_text = torch.exp(logits - self.lse[:, :, self.image, None].float())
        return self._image_to_text

    def edit_image_to_text(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Makes the layer use `probabilities` as its image→text attention; returns the change from what it used.

        The output's image rows are corrected by (P' − P)·V_text: the image→image part is left as it was, so each
        image query's text mass should be kept."""
        delta = probabilities - self.image_to_text()
        out = self.out.clone()
        out[:, :, self.image] += torch.matmul(delta, self.value[:, :, self.text].float()).to(out.dtype)
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
    token `grid` (rows, columns), `text_length` and the count `forwards`, then calls `forward_started()`; each hooked
    layer then calls the intervention with its `JointAttention`. Editors (`edits = True`) run before observers."""

    edits: ClassVar[bool] = False
    grid: Grid | None
    text_length: int | None
    forwards: int
    _installed: bool = False  # the "already hooked" guard: one intervention is installed by one context at a time

    def forward_started(self) -> None:
        """Called once per forward, after grid, text_length and forwards are set."""

    def __call__(self, attention: JointAttention) -> None:
        raise NotImplementedError


class InterventionProcessor:
    """A family's stock joint-attention processor that runs interventions' hooks on the attention it computes."""

    def __init__(self, family: Family, layer: int, replaced):
        self.family, self.layer, self.replaced = family, layer, replaced  # `replaced`: put back when the last leaves
        self.hooks: list[Intervention] = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        query, key, value, text_length = self.family.qkv(
            attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs
        )
        if text_length is None:  # every hook was installed before this forward began: they agree
            text_length = self.hooks[0].text_length
        image, text = self.family.split(query.shape[2], text_length)
        scale = 1 / math.sqrt(query.shape[-1])
        out, lse = attention_with_lse(query, key, value, scale)
        attention = JointAttention(self.layer, query, key, value, out, lse, scale, image, text)
        for hook in [h for h in self.hooks if h.edits] + [h for h in self.hooks if not h.edits]:
            hook(attention)
        return self.family.output(attn, attention.out, image, text, query.dtype)


def check_layers(layers: Sequence[int], modules: Sequence[torch.nn.Module]) -> list[int]:
    """Returns `layers` as ints, or raises IndexError naming those the transformer does not have."""
    layers = [int(layer) for layer in layers]
    bad = [layer for layer in layers if not 0 <= layer < len(modules)]
    if bad:
        raise IndexError(f"layers {bad} out of range: the transformer has {len(modules)} joint-attention layers")
    return layers


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
        intervention.text_length = family.text_length(args, kwargs)
        intervention.forwards += 1
        intervention.forward_started()

    hooked: list[InterventionProcessor] = []
    hook = transformer.register_forward_pre_hook(note_forward, with_kwargs=True)
    intervention._installed = True
    try:
        for layer in layers:
            processor = modules[layer].processor
            if not isinstance(processor, InterventionProcessor):
                processor = InterventionProcessor(family, layer, processor)
                modules[layer].set_processor(processor)
            processor.hooks.append(intervention)
            hooked.append(processor)
        yield intervention
    finally:
        hook.remove()
        for processor in reversed(hooked):
            del processor.hooks[next(i for i, h in enumerate(processor.hooks) if h is intervention)]
            module = modules[processor.layer]
            if not processor.hooks and module.processor is processor:
                module.set_processor(processor.replaced)
        intervention._installed = False
