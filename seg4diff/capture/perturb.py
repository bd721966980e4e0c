"""Causal interventions on one layer's image-query → text-key attention, during any forward (a whole generation too).

    with perturb_attention(transformer, layer=2, kind="blur", blur_sigma=1.0, alpha=0.5):
        images = generate(...)

The layer's attention is computed as usual (fused kernel); only the image×text part P (image queries × text keys,
softmax over ALL joint keys) is replaced by P' and the output corrected by (P' − P)·V_text — the N×N matrix never
exists. Every perturbation keeps each image query's total mass on the text (so the image→image part is untouched):

- `blur`: each text key's map over the image queries is Gaussian-blurred (σ in tokens), as the paper does;
- `mean`: each map replaced by its spatial mean (the limit of an infinitely wide blur: where, not how much);
- `word_shuffle`: the control: each prompt's OWN word positions permuted, a derangement where possible (every word's
  map moves to another word), drawn per prompt (seeded); padding and special positions untouched;
- `shuffle`: ALL text positions permuted by one seeded permutation (padding included: mostly an ablation).

At strength α ∈ (0, 1] the layer uses P' = (1 − α)·P + α·perturb(P): the text mass is still kept and the change
|P' − P| is α times the full one, so α sets the dose.

A perturbation is an editing intervention (`seg4diff.capture.intervention`): it stacks with captures and other
perturbations of the same layer, and a capture there records P', the attention the layer used.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F

from seg4diff.capture.families import family_of, forward_arguments
from seg4diff.capture.intervention import Intervention, JointAttention, intervene

if TYPE_CHECKING:
    from seg4diff.backbones.backbone import TextToken

Kind = Literal["blur", "mean", "word_shuffle", "shuffle"]
KINDS: tuple[Kind, ...] = ("blur", "mean", "word_shuffle", "shuffle")
PERMUTING: tuple[Kind, ...] = ("word_shuffle", "shuffle")  # kinds with a random draw (averaged over draws)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Returns (…, y, x) maps blurred by a separable Gaussian of `sigma` pixels (reflect padding, mass kept per map
    up to the borders)."""
    radius = max(1, int(3 * sigma + 0.5))  # scipy.ndimage.gaussian_filter's truncation at 3σ
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(maps.dtype)
    lead, (height, width) = maps.shape[:-2], maps.shape[-2:]
    x = maps.reshape(-1, 1, height, width)
    pad_y, pad_x = min(radius, height - 1), min(radius, width - 1)
    x = F.pad(x, (pad_x, pad_x, pad_y, pad_y), mode="reflect" if min(height, width) > 1 else "replicate")
    x = F.conv2d(x, kernel[radius - pad_x : radius + pad_x + 1].view(1, 1, 1, -1))
    x = F.conv2d(x, kernel[radius - pad_y : radius + pad_y + 1].view(1, 1, -1, 1))
    return x.reshape(*lead, height, width)


def perturb(
    probabilities: torch.Tensor,
    grid: tuple[int, int],
    kind: Kind,
    blur_sigma: float = 1.0,
    permutation: torch.Tensor | None = None,
    alpha: float = 1.0,
) -> torch.Tensor:
    """Returns P' = (1 − α)·P + α·perturb(P) for P = (batch, head, image query, text key) image→text attention; each
    row's text mass kept. `permutation` (the shuffles): (text key,) for the whole batch or (batch, text key) per
    sample; text key j then gets the map of key permutation[j]."""
    if kind in PERMUTING:
        if permutation is None:
            raise ValueError(f"{kind} needs a permutation of the text keys")
        if permutation.dim() == 1:
            changed = probabilities[..., permutation]
        else:
            changed = probabilities.gather(-1, permutation[:, None, None, :].expand(probabilities.shape))
    elif kind in ("blur", "mean"):
        batch, heads, queries, keys = probabilities.shape
        maps = probabilities.transpose(-1, -2).reshape(batch, heads, keys, *grid)  # (…, text key, y, x)
        if kind == "blur":
            changed = gaussian_blur(maps, blur_sigma)
        else:
            changed = maps.mean(dim=(-2, -1), keepdim=True).expand_as(maps)
        changed = changed.reshape(batch, heads, keys, queries).transpose(-1, -2)
        mass, new_mass = probabilities.sum(-1, keepdim=True), changed.sum(-1, keepdim=True)
        changed = changed * (mass / new_mass.clamp_min(torch.finfo(changed.dtype).tiny))
    else:
        raise ValueError(f"unknown perturbation '{kind}'; choose from {KINDS}")
    return changed if alpha == 1 else probabilities + alpha * (changed - probabilities)


def word_derangement(words: Sequence[str], rng: np.random.Generator, tries: int = 10_000) -> np.ndarray:
    """Returns a permutation of range(len(words)) moving every word to a place that holds a different word where one
    exists (a repeated "and" must not swap with itself), else to a different place; the identity below 2 words."""
    n = len(words)
    if n < 2:
        return np.arange(n)
    words = np.asarray(words, dtype=object)
    possible = max(np.unique(words, return_counts=True)[1]) * 2 <= n  # else some word must land on its like
    for _ in range(tries):
        permutation = rng.permutation(n)
        if (words[permutation] != words).all() if possible else (permutation != np.arange(n)).all():
            return permutation
    return np.roll(np.arange(n), 1)  # a derangement; not reached in practice (≥ 1/252 of draws succeed up to 10 words)


def word_permutations(
    prompts: Sequence[str], tokens: Sequence[Sequence[TextToken]], seed: int, draw: int
) -> torch.Tensor:
    """Returns (prompt, text position) permutations: each prompt's word positions (a character span: not padding, not
    special) deranged among themselves per encoder (CLIP words with CLIP words, T5 with T5), every other position fixed.
    Drawn from (seed, draw, the prompt's text): the same prompt gets the same permutation at every layer and batch."""
    table = np.tile(np.arange(max(len(t) for t in tokens)), (len(prompts), 1))  # identity past a shorter prompt
    for row, (prompt, prompt_tokens) in enumerate(zip(prompts, tokens)):
        rng = np.random.default_rng([seed, draw, zlib.crc32(prompt.encode())])
        for encoder in dict.fromkeys(token.encoder for token in prompt_tokens):
            positions = [p for p, t in enumerate(prompt_tokens) if t.encoder == encoder and t.end > t.start]
            moved = word_derangement([prompt_tokens[p].token for p in positions], rng)
            table[row, positions] = np.asarray(positions, dtype=np.int64)[moved]
    return torch.from_numpy(table)


class PromptRows:
    """Which of the registered prompts each row of a forward is, found from its text embeddings (the transformer never
    sees the prompt's text): the samplers encode prompts and stack CFG's unconditional rows themselves, so the rows a
    layer sees are matched to the prompts they came from, and a row matching none stops the run."""

    def __init__(self, prompt_embeds: torch.Tensor, projection: int = 8):
        generator = torch.Generator().manual_seed(0)
        self.projection = torch.randn(prompt_embeds.shape[-1], projection, generator=generator)
        self.length = prompt_embeds.shape[1]
        self.fingerprints = self._fingerprint(prompt_embeds)  # (prompt, text position × projection): small

    def _fingerprint(self, embeds: torch.Tensor) -> torch.Tensor:
        """Projected rows at `length` text positions: a forward's text cut or zero-padded to it (Qwen-Image pads a
        batch's shorter prompts with zero rows, so a prompt's rows match at any batch length)."""
        embeds = embeds.detach().float().cpu()[:, : self.length]
        embeds = F.pad(embeds, (0, 0, 0, self.length - embeds.shape[1]))
        return (embeds @ self.projection).flatten(1)

    def __call__(self, embeds: torch.Tensor, tolerance: float = 1e-2) -> torch.Tensor:
        """Returns the index of each row's prompt (batch,), or raises ValueError naming the rows that match none."""
        rows = self._fingerprint(embeds)
        distance, index = torch.cdist(rows, self.fingerprints).min(1)
        scale = self.fingerprints.norm(dim=1)[index].clamp_min(1e-6)
        unknown = torch.nonzero(distance > tolerance * scale).flatten().tolist()
        if unknown:
            raise ValueError(
                f"rows {unknown} of a forward's text match none of the {len(self.fingerprints)} registered prompts: "
                "register every prompt the model is given (captions, the unconditional '', flow-loss prompts)"
            )
        return index


class WordShuffle:
    """A `word_shuffle` draw: per registered prompt its permutation (word_permutations), looked up per forward row."""

    def __init__(self, rows: PromptRows, permutations: torch.Tensor):
        self.rows, self.permutations = rows, permutations

    def __call__(self, embeds: torch.Tensor) -> torch.Tensor:
        """Returns the (batch, text position) permutations of a forward's rows."""
        return self.permutations[self.rows(embeds)]


class Perturbation(Intervention):
    """An editing intervention: a layer's image→text attention replaced by a perturbed copy at strength `alpha`.
    `strength` sums mean |P' − P| per image query (L1 over the text keys) over calls, to compare perturbations' sizes
    (`l1` is its mean)."""

    edits = True

    def __init__(
        self, layer: int, kind: Kind, blur_sigma: float, seed: int, alpha: float = 1.0, words: WordShuffle | None = None
    ):
        if not 0 < alpha <= 1:
            raise ValueError(f"perturbation strength alpha must be in (0, 1], got {alpha}")
        if kind == "word_shuffle" and words is None:
            raise ValueError("word_shuffle needs the prompts' word permutations: pass words=WordShuffle(...)")
        self.layer, self.kind, self.blur_sigma, self.seed, self.alpha = layer, kind, blur_sigma, seed, alpha
        self.words = words
        self.permutation: torch.Tensor | None = None  # shuffle: of the text keys, drawn at the first forward
        self.grid: tuple[int, int] | None = None
        self.forwards = 0
        self.strength, self.calls = 0.0, 0

    @property
    def l1(self) -> float:
        """The mean L1 change of an image query's attention over the text keys, over the calls so far."""
        return self.strength / max(self.calls, 1)

    def rows_started(self, text_embeds: torch.Tensor) -> None:
        """word_shuffle: takes the permutations of this forward's rows (batch, text position)."""
        self.permutation = self.words(text_embeds)

    def __call__(self, attention: JointAttention) -> None:
        """Makes the layer use P' for the image-query × text-key part of its attention."""
        probabilities = attention.image_to_text()
        if self.kind == "shuffle" and self.permutation is None:  # drawn once, at the first call, over its text keys
            generator = torch.Generator().manual_seed(self.seed)
            self.permutation = torch.randperm(probabilities.shape[-1], generator=generator)
        permutation = None if self.permutation is None else _fitted(self.permutation, probabilities.shape[-1])
        changed = perturb(probabilities, self.grid, self.kind, self.blur_sigma, permutation, self.alpha)
        delta = attention.edit_image_to_text(changed)
        self.strength += float(delta.abs().sum(-1).mean())
        self.calls += 1


def _fitted(permutation: torch.Tensor, keys: int) -> torch.Tensor:
    """Returns a permutation of the text keys cut or extended by the identity to `keys` (a batch whose text is
    shorter or longer than the longest registered prompt's; positions past a prompt's own text are never moved)."""
    if permutation.shape[-1] < keys:
        tail = torch.arange(permutation.shape[-1], keys).expand(*permutation.shape[:-1], -1)
        permutation = torch.cat([permutation, tail], -1)
    return permutation[..., :keys]


@contextlib.contextmanager
def perturb_attention(
    transformer: torch.nn.Module,
    layer: int,
    kind: Kind,
    blur_sigma: float = 1.0,
    seed: int = 0,
    alpha: float = 1.0,
    words: WordShuffle | None = None,
) -> Iterator[Perturbation]:
    """Perturbs layer `layer`'s image→text attention at strength `alpha` for every forward inside the context; takes it
    off on exit. SD3/SD3.5 layers, and FLUX's double- then single-stream layers (numbered as
    `joint_attention_modules`). `word_shuffle` needs `words`: the permutations of every prompt the model is given."""
    perturbation = Perturbation(layer, kind, blur_sigma, seed, alpha, words)

    text_input = family_of(transformer).text_input

    def note_rows(module, args, kwargs):
        text = forward_arguments(module, args, kwargs).get(text_input)
        if isinstance(text, list):  # Z-Image: one (tokens, dim) caption per sample, zero-padded to the longest
            text = torch.nn.utils.rnn.pad_sequence(text, batch_first=True)
        if text is None:
            raise ValueError(f"word_shuffle needs the forward's {text_input} (the prompt embeddings)")
        perturbation.rows_started(text)

    hook = transformer.register_forward_pre_hook(note_rows, with_kwargs=True) if kind == "word_shuffle" else None
    try:
        with intervene(transformer, [layer], perturbation):
            yield perturbation
    finally:
        if hook is not None:
            hook.remove()
