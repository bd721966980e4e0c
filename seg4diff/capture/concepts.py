"""ConceptAttention (Helbling et al., ICML 2025): concept tokens through the text stream, one way, read in output space.

    with concept_attention(transformer, concepts) as readout:   # (batch, concept, text dim) concept embeddings
        transformer(**inputs)                                    # its output unchanged, bit for bit
    readout.scores   # {layer: (batch, concept, image token)}: concept output · image output, before the softmax

Each concept is one extra token that enters through the transformer's context embedder and runs beside the prompt
through every layer that keeps a text stream (SD3's joint layers, FLUX's double-stream ones) with that layer's own
text-stream weights: the context modulation (the time embedding with a zero pooled text vector, as ConceptAttention
does), the text q/k/v projections and norms, attention, the text output projection and feed-forward. A concept's
queries attend to the concept and image keys only (not the prompt's); no token attends to a concept, so the image and
prompt tokens — and the generated image — are what they were. A layer's score is the dot product of each concept's
attention output with each image token's (both before the output projection, heads concatenated):
ConceptAttention's output space. Maps are the softmax over concepts, averaged over chosen layers
(`seg4diff.evaluation.readouts.ConceptAttention`).

The image side is read from the layer's own attention kernel call (`seg4diff.capture.intervention`): the image keys,
values and outputs exactly as the stock processor formed them (FLUX's rotary embedding included; a concept sits at
position 0, where the rotation is the identity, as in ConceptAttention).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from seg4diff.capture.families import Grid, family_of
from seg4diff.capture.intervention import Intervention, JointAttention, intervene

# the transformer classes whose text-stream layers have SD3's / FLUX's block layout (norm1_context, attn.add_*_proj,
# attn.to_add_out, norm2_context, ff_context), and the layer list that holds them
TEXT_STREAM_LAYERS = {"SD3Transformer2DModel": "transformer_blocks", "FluxTransformer2DModel": "transformer_blocks"}


@dataclass(eq=False)
class ConceptReadout(Intervention):
    """The concept stream of one context: its tokens and mask, and each layer's scores of the last forward."""

    concepts: torch.Tensor  # (batch, concept, text dim): one embedding per concept
    mask: torch.Tensor | None  # (batch, concept) True where a concept is real (None: all are)
    grid: Grid | None = None
    forwards: int = 0
    scores: dict[int, torch.Tensor] = field(default_factory=dict)  # layer → (batch, concept, image token), fp32
    stream: torch.Tensor | None = None  # the concept tokens between layers of the running forward
    temb: torch.Tensor | None = None  # the concept stream's time embedding (zero pooled text vector)
    _attention: dict[int, JointAttention] = field(default_factory=dict)

    def forward_started(self) -> None:
        self.scores, self._attention = {}, {}

    def __call__(self, attention: JointAttention) -> None:
        self._attention[attention.layer] = attention

    def key_bias(self, image_tokens: int, dtype: torch.dtype) -> torch.Tensor | None:
        """Returns the additive bias (batch, 1, 1, concept + image) that hides padded concepts, or None."""
        if self.mask is None:
            return None
        keys = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], image_tokens)], 1)
        bias = torch.zeros(keys.shape, dtype=dtype, device=keys.device).masked_fill(~keys, float("-inf"))
        return bias[:, None, None, :]

    def step(self, layer: int, block: torch.nn.Module) -> None:
        """Runs the concept stream through `block` (whose attention was just tapped) and records its scores."""
        attention = self._attention.pop(layer)
        attn = block.attn
        pre_only = bool(getattr(block, "context_pre_only", False))
        if pre_only:
            normed = block.norm1_context(self.stream, self.temb)
        else:
            normed, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1_context(self.stream, emb=self.temb)
        heads = attention.query.shape[1]
        split = lambda t: t.unflatten(-1, (heads, -1)).transpose(1, 2)  # noqa: E731  (b, c, h·d) → (b, h, c, d)
        query, key = split(attn.add_q_proj(normed)), split(attn.add_k_proj(normed))
        value = split(attn.add_v_proj(normed))
        if attn.norm_added_q is not None:
            query = attn.norm_added_q(query)
        if attn.norm_added_k is not None:
            key = attn.norm_added_k(key)
        image = attention.image
        keys = torch.cat([key.to(attention.key.dtype), attention.key[:, :, image]], 2)
        values = torch.cat([value.to(attention.value.dtype), attention.value[:, :, image]], 2)
        bias = self.key_bias(image.stop - image.start, keys.dtype)
        out = F.scaled_dot_product_attention(
            query.to(keys.dtype), keys, values, attn_mask=bias, scale=attention.scale
        )  # (b, h, concept, d)
        image_out = attention.out[:, :, attention.image_rows]  # (b, h, image, d)
        self.scores[layer] = torch.einsum("bhcd,bhnd->bcn", out.float(), image_out.float())
        if pre_only:  # the layer's text stream ends here (SD3's last layer)
            self.stream = None
            return
        merged = out.transpose(1, 2).flatten(2).to(self.stream.dtype)
        stream = self.stream + gate_msa.unsqueeze(1) * attn.to_add_out(merged)
        normed = block.norm2_context(stream) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        self.stream = stream + gate_mlp.unsqueeze(1) * block.ff_context(normed)


def text_stream_blocks(transformer: torch.nn.Module) -> torch.nn.ModuleList:
    """Returns the layers that keep a text stream (layer k of it is joint-attention layer k), or raises TypeError."""
    name = type(transformer).__name__
    if name not in TEXT_STREAM_LAYERS:
        raise TypeError(
            f"ConceptAttention runs concept tokens through SD3's and FLUX.1's text-stream layers "
            f"({', '.join(TEXT_STREAM_LAYERS)}), not {name}'s"
        )
    return getattr(transformer, TEXT_STREAM_LAYERS[name])


@contextlib.contextmanager
def concept_attention(
    transformer: torch.nn.Module, concepts: torch.Tensor, mask: torch.Tensor | None = None
) -> Iterator[ConceptReadout]:
    """Runs `concepts` (batch, concept, text dim) beside every forward inside the context; yields the readout whose
    `scores` hold each text-stream layer's (batch, concept, image token) scores of the last forward. `mask`
    (batch, concept) marks real concepts where the batch's concept lists differ in length."""
    blocks = text_stream_blocks(transformer)
    family_of(transformer)
    readout = ConceptReadout(concepts, mask)
    embed_time = transformer.time_text_embed

    def start(module, args, kwargs):
        readout.stream = transformer.context_embedder(concepts.to(transformer.dtype))
        readout.temb = None

    def concept_time(module, args, output):
        if readout.temb is None:  # the stock call (the concept one below comes back here with temb set)
            *rest, pooled = args  # (timestep[, guidance], pooled text) → the same with the pooled text zeroed
            readout.temb = output  # marks the nested call
            readout.temb = embed_time(*rest, torch.zeros_like(pooled))

    def after_block(layer: int):
        return lambda module, args, output: readout.step(layer, module) if readout.stream is not None else None

    handles = [
        transformer.register_forward_pre_hook(start, with_kwargs=True),
        embed_time.register_forward_hook(concept_time),
        *(block.register_forward_hook(after_block(i)) for i, block in enumerate(blocks)),
    ]
    try:
        with intervene(transformer, range(len(blocks)), readout):
            yield readout
    finally:
        for handle in handles:
            handle.remove()
