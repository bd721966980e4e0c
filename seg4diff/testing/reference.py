"""Naive references for checking `seg4diff.capture`: the full joint softmax(QKᵀ/√d), built from a module's own
layers.

These materialise the N×N matrix on purpose (tests and benchmarks only); they share no code with the capture.
"""

from __future__ import annotations

import math

import torch
from diffusers.models.embeddings import apply_rotary_emb


def naive_sd3_attention(attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
    """Returns the (batch, head, query, key) joint probabilities of an SD3/SD3.5 block, order [image, text]."""
    batch, heads = hidden_states.shape[0], attn.heads
    split = lambda t: t.view(batch, -1, heads, t.shape[-1] // heads).transpose(1, 2)  # noqa: E731
    q, k = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states))
    tq, tk = split(attn.add_q_proj(encoder_hidden_states)), split(attn.add_k_proj(encoder_hidden_states))
    if attn.norm_q is not None:
        q, k = attn.norm_q(q), attn.norm_k(k)
    if attn.norm_added_q is not None:
        tq, tk = attn.norm_added_q(tq), attn.norm_added_k(tk)
    q, k = torch.cat([q, tq], 2).float(), torch.cat([k, tk], 2).float()
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)


def naive_flux_attention(
    attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None, image_rotary_emb
) -> torch.Tensor:
    """Returns the joint probabilities of a FLUX block, order [text, image]; a single-stream block gets the joint
    sequence."""
    q = attn.norm_q(attn.to_q(hidden_states).unflatten(-1, (-1, attn.head_dim)))
    k = attn.norm_k(attn.to_k(hidden_states).unflatten(-1, (-1, attn.head_dim)))
    if encoder_hidden_states is not None:
        tq = attn.norm_added_q(attn.add_q_proj(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim)))
        tk = attn.norm_added_k(attn.add_k_proj(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim)))
        q, k = torch.cat([tq, q], 1), torch.cat([tk, k], 1)
    q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1).transpose(1, 2).float()
    k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1).transpose(1, 2).float()
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(attn.head_dim), dim=-1)


def naive_concept_scores(transformer, inputs: dict, concepts: torch.Tensor) -> dict[int, torch.Tensor]:
    """Returns ConceptAttention's (batch, concept, image token) output-space scores of every text-stream layer of an
    SD3 or FLUX.1 transformer, recomputed from each layer's inputs in a stock forward: the joint softmax materialised,
    the concept stream run by hand through the layer's text-stream weights (zero pooled text, concept keys and image
    keys only)."""
    blocks = transformer.transformer_blocks
    flux = hasattr(transformer, "single_transformer_blocks")
    seen: list[dict] = []
    hooks = [b.register_forward_pre_hook(lambda m, a, k: seen.append(k), with_kwargs=True) for b in blocks]
    try:
        with torch.no_grad():
            transformer(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    timestep = inputs["timestep"] * (1000 if flux else 1)
    concept_temb = transformer.time_text_embed(timestep, torch.zeros_like(inputs["pooled_projections"]))
    stream = transformer.context_embedder(concepts)
    scores = {}
    for layer, (block, kw) in enumerate(zip(blocks, seen)):
        attn, temb = block.attn, kw["temb"]
        heads = lambda t: t.unflatten(-1, (attn.heads, -1)).transpose(1, 2)  # noqa: E731, B023
        pre_only = bool(getattr(block, "context_pre_only", False))

        def project(x, q, k, v, norm_q, norm_k):
            query, key, value = heads(q(x)), heads(k(x)), heads(v(x))
            return (norm_q(query) if norm_q else query), (norm_k(key) if norm_k else key), value

        image = project(
            block.norm1(kw["hidden_states"], emb=temb)[0], attn.to_q, attn.to_k, attn.to_v, attn.norm_q, attn.norm_k
        )
        norm1_context = block.norm1_context
        text_in = (
            norm1_context(kw["encoder_hidden_states"], temb)
            if pre_only
            else norm1_context(kw["encoder_hidden_states"], emb=temb)[0]
        )
        text = project(text_in, attn.add_q_proj, attn.add_k_proj, attn.add_v_proj, attn.norm_added_q, attn.norm_added_k)
        n = image[0].shape[2]
        if flux:  # [text, image], rotated jointly
            q, k, v = (torch.cat([t, i], 2) for t, i in zip(text, image))
            q = apply_rotary_emb(q, kw["image_rotary_emb"])
            k = apply_rotary_emb(k, kw["image_rotary_emb"])
            image_q, image_k, image_v = q[:, :, -n:], k[:, :, -n:], v[:, :, -n:]
        else:  # [image, text]
            q, k, v = (torch.cat([i, t], 2) for i, t in zip(image, text))
            image_q, image_k, image_v = q[:, :, :n], k[:, :, :n], v[:, :, :n]
        scale = 1 / math.sqrt(q.shape[-1])
        image_out = torch.softmax(image_q.double() @ k.double().transpose(-1, -2) * scale, -1) @ v.double()
        if pre_only:
            concept_in = norm1_context(stream, concept_temb)
        else:
            concept_in, gate_msa, shift_mlp, scale_mlp, gate_mlp = norm1_context(stream, emb=concept_temb)
        cq, ck, cv = project(
            concept_in, attn.add_q_proj, attn.add_k_proj, attn.add_v_proj, attn.norm_added_q, attn.norm_added_k
        )
        keys, values = torch.cat([ck, image_k], 2).double(), torch.cat([cv, image_v], 2).double()
        concept_out = torch.softmax(cq.double() @ keys.transpose(-1, -2) * scale, -1) @ values
        scores[layer] = torch.einsum("bhcd,bhnd->bcn", concept_out, image_out)
        if pre_only:
            break
        merged = concept_out.transpose(1, 2).flatten(2).to(stream.dtype)
        stream = stream + gate_msa.unsqueeze(1) * attn.to_add_out(merged)
        normed = block.norm2_context(stream) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        stream = stream + gate_mlp.unsqueeze(1) * block.ff_context(normed)
    return scores
