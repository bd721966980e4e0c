"""Exact, memory-light capture of MM-DiT joint attention between image and text tokens.

    with capture_attention(transformer, layers=[9], text_tokens=positions) as cap:
        transformer(**inputs)
    cap.image_to_text   # xarray (batch, layer, head, image_token, text_token): softmax over ALL joint keys

The capture is an observing intervention (`seg4diff.capture.intervention`): each layer's own attention kernel call
is tapped, the attention output and the per-row log-sum-exp over all keys taken from one fused kernel. Only the
image×text and text×image logits that are kept are formed, so the N×N joint matrix (and its
image×image part) never exists. Inside a perturbation of the same layer it records the attention the layer used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import xarray as xr

from seg4diff.capture.families import Grid, joint_attention_modules
from seg4diff.capture.intervention import Intervention, JointAttention, check_layers, intervene
from seg4diff.capture.kernels import attention_with_lse

Direction = Literal["image_to_text", "text_to_image"]
DIRECTIONS: tuple[Direction, ...] = ("image_to_text", "text_to_image")


@dataclass(eq=False)
class Recorder(Intervention):
    """Collects, per captured layer, the requested slices of attention from inside the processors."""

    directions: tuple[Direction, ...]
    text_tokens: torch.Tensor | None  # (kept,) or (batch, kept) positions in the text sequence
    head_mean: bool
    output: Literal["probabilities", "logits"]
    detach: bool
    diagnostics: bool
    text_length: int | None = None  # text keys of the last layer call
    grid: Grid | None = None  # image tokens as (rows, columns), set per forward
    forwards: int = 0  # forward passes seen (denoising steps when a whole generation is captured)
    records: dict[str, dict[int, list[torch.Tensor]]] = field(default_factory=dict)  # name → layer → one per call

    def _keep(self, text: torch.Tensor) -> torch.Tensor:
        """Returns the kept text rows of (batch, head, text, dim)."""
        if self.text_tokens is None:
            return text
        if self.text_tokens.device != text.device:  # moved once, not once per layer (a host-to-device copy syncs)
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

    def __call__(self, attention: JointAttention) -> None:
        """Forms the kept image×text / text×image logits from q, k and the kernel's log-sum-exp over all keys.

        The logits are formed in fp32 from fp32 copies of the (small) kept slices, whatever the model's dtype: a bf16
        product would round each score to 8 bits of mantissa before the softmax. Where an editor changed the image→text
        attention, that direction records what the layer used instead.
        """
        layer, lse, edited = attention.layer, attention.lse, attention.edited
        self.text_length = attention.text.stop - attention.text.start
        for direction in self.directions:
            if direction == "image_to_text":
                row_lse = lse[:, :, attention.image_rows]
                if edited is not None:
                    self._record_edited(layer, edited[1], row_lse)
                    continue
                if self.text_tokens is None:
                    logits = attention.scores(attention.image_rows, attention.text)
                else:  # only the kept text keys' columns are formed
                    kept = self._keep(attention.key[:, :, attention.text])
                    logits = torch.matmul(attention.query[:, :, attention.image_rows].float(), kept.float().mT)
                    logits = logits * attention.scale + self._bias_columns(attention)
            else:
                if attention.text_rows is None:
                    raise ValueError(
                        f"layer {layer}: only its image tokens query the joint keys, so it has no text→image "
                        "attention: capture it with directions=('image_to_text',)"
                    )
                if attention.bias is not None and self.text_tokens is not None:
                    raise NotImplementedError("text→image capture of chosen text tokens under an attention mask")
                rows = self._keep(attention.query[:, :, attention.text_rows])
                logits = attention.scores(attention.text_rows, attention.image, query=rows)
                row_lse = self._keep(lse[:, :, attention.text_rows, None])[..., 0]
            self._store(
                direction, layer, logits if self.output == "logits" else torch.exp(logits - row_lse.float()[..., None])
            )
            if self.output == "logits" and direction == "image_to_text":  # softmax denominators, to renormalise
                self._store("image_lse", layer, row_lse.float())
        if self.diagnostics:
            self._diagnostics(attention)

    def _bias_columns(self, attention: JointAttention) -> torch.Tensor | float:
        """Returns the mask's image-row × kept-text-column part (0 without a mask)."""
        if attention.bias is None:
            return 0.0
        bias = attention.bias.expand(*attention.query.shape[:3], attention.key.shape[2])
        columns = bias[:, :, attention.image_rows, attention.text].transpose(-1, -2)
        return self._keep(columns).transpose(-1, -2).float()

    def _record_edited(self, layer: int, used: torch.Tensor, row_lse: torch.Tensor) -> None:
        """Records the image→text probabilities an editor made the layer use; as logits, log P' + lse, so that
        logit − image_lse is still the log-probability."""
        probabilities = self._keep(used.transpose(-1, -2)).transpose(-1, -2)
        if self.output == "logits":
            self._store("image_to_text", layer, torch.log(probabilities) + row_lse.float()[..., None])
            self._store("image_lse", layer, row_lse.float())
        else:
            self._store("image_to_text", layer, probabilities)

    def _diagnostics(self, attention: JointAttention) -> None:
        """Per query row: attention mass on the other modality and the entropy of the full row, still without N×N.

        Entropy H = lse − Σ_j p_j·s_j, and Σ_j p_j·s_j = scale · q·(Σ_j p_j k_j) is attention with the keys as values.
        An edited image row differs from the stock one only on the text keys: H' = H + Σ_text (p log p − p' log p').
        """
        if attention.bias is not None or attention.text_rows is None:
            raise NotImplementedError(
                f"layer {attention.layer}: attention diagnostics need unmasked attention in which every token queries"
            )
        query, key, lse, scale, edited = (
            attention.query,
            attention.key,
            attention.lse,
            attention.scale,
            attention.edited,
        )
        layer, image, text = attention.layer, attention.image, attention.text
        with torch.no_grad():
            expected_key, _ = attention_with_lse(query, key, key, scale)
            entropy = lse.float() - scale * (query.float() * expected_key.float()).sum(-1)
            to_text = torch.logsumexp(attention.scores(image, text), -1)
            to_image = torch.logsumexp(attention.scores(text, image), -1)
            image_entropy, image_mass = entropy[:, :, image], torch.exp(to_text - lse[:, :, image].float())
            if edited is not None:
                stock, used = edited
                image_entropy = image_entropy + (
                    torch.special.xlogy(stock, stock) - torch.special.xlogy(used, used)
                ).sum(-1)
                image_mass = used.sum(-1)
            self._store("image_entropy", layer, image_entropy)
            self._store("text_entropy", layer, self._keep(entropy[:, :, text, None])[..., 0])
            self._store("image_to_text_mass", layer, image_mass)
            self._store(
                "text_to_image_mass",
                layer,
                self._keep(torch.exp(to_image - lse[:, :, text].float())[..., None])[..., 0],
            )


def _unflatten(array: xr.DataArray, dim: str, grid: tuple[int, int]) -> xr.DataArray:
    """Returns `array` with its `dim` axis (row-major image tokens) split into (y, x)."""
    axis = array.dims.index(dim)
    values = array.values.reshape(array.shape[:axis] + tuple(grid) + array.shape[axis + 1 :])
    coords = {name: coord for name, coord in array.coords.items() if dim not in coord.dims}
    dims = array.dims[:axis] + ("y", "x") + array.dims[axis + 1 :]
    return xr.DataArray(values, dims=dims, coords=coords, name=array.name)


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
        return self.recorder.forwards

    def tensor(self, name: str, step: int | None = None) -> torch.Tensor:
        """Returns the record `name` stacked over layers: (batch, layer, head, ...) for one forward (or `step`),
        (step, batch, layer, head, ...) for several — with gradients if not detached."""
        if name not in self.recorder.records:
            raise KeyError(
                f"nothing recorded for '{name}': was the transformer called inside the capture, with it requested?"
            )
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
        return xr.DataArray(
            values.detach().float().cpu().numpy(), dims=dims, name=name, coords={"layer": self.layers, "head": head}
        )

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
        token = "image_token" if name.startswith("image") else "text_token"
        return self._array(name, ("batch", "layer", "head", token))


@contextlib.contextmanager
def capture_attention(
    transformer: torch.nn.Module,
    layers: Sequence[int] | None = None,
    directions: Sequence[Direction] = DIRECTIONS,
    text_tokens: Sequence[int] | torch.Tensor | None = None,
    head_mean: bool = False,
    output: Literal["probabilities", "logits"] = "probabilities",
    detach: bool = True,
    diagnostics: bool = False,
) -> Iterator[AttentionCapture]:
    """Records the attention of `layers` (None: every layer) for every forward inside the context; on exit (even on
    error) the layers' processors are as they were.

    `text_tokens`: positions in the text sequence to keep, (kept,) for the whole batch or (batch, kept) per sample.
    `output="logits"` keeps the pre-softmax scores (for losses) and, as `image_lse`, each image query's log-sum-exp
    over all joint keys (logit − image_lse is the log-probability); `detach=False` keeps their graph.
    Every forward inside the capture is kept (a `step` dim when there are several): to wrap a whole generation at
    full size, bound the memory with `layers`, `text_tokens` and `head_mean`.
    """
    modules = joint_attention_modules(transformer)
    layers = list(range(len(modules))) if layers is None else check_layers(layers, modules)
    unknown = set(directions) - set(DIRECTIONS)
    if unknown:
        raise ValueError(f"unknown directions {sorted(unknown)}; choose from {DIRECTIONS}")
    index = None if text_tokens is None else torch.as_tensor(text_tokens, dtype=torch.long)
    recorder = Recorder(tuple(directions), index, head_mean, output, detach, diagnostics)
    with intervene(transformer, layers, recorder):
        yield AttentionCapture(layers, recorder)
