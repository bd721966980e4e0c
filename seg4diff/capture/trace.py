"""Trace a whole generation, as DAAM's `trace` does for UNets: every denoising step's joint attention, by word.

with trace(pipe) as tc:                  # a StableDiffusion3Pipeline or FluxPipeline
    image = pipe("a red cat on a mat", num_inference_steps=28).images[0]
tc.capture.image_to_text                 # (step, batch, layer, head, image_token, text_token)
tc.word_maps("cat")                      # (step, layer, head, y, x): the word's sub-word maps averaged
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import xarray as xr

from seg4diff.backbones.backbone import backbone_from_pipeline
from seg4diff.capture.attention import AttentionCapture, capture_attention


@dataclass
class Trace:
    pipe: object
    capture: AttentionCapture
    prompts: list[str] = field(default_factory=list)  # as the pipeline received them (its first encode_prompt call)

    def _tokens(self, prompt: str):
        backbone = backbone_from_pipeline(self.pipe)
        backbone.text_length = backbone.text_length_of(self.capture.recorder.text_length)
        return backbone.prompt_tokens([prompt])[0]

    def word_positions(self, word: str, prompt: int = 0, encoder: str | None = None) -> list[int]:
        """Returns the text positions whose characters belong to `word` (each whole-word occurrence) in prompt
        `prompt`."""
        text = self.prompts[prompt]
        spans = [m.span() for m in re.finditer(rf"(?<!\w){re.escape(word)}(?!\w)", text)]
        if not spans:
            raise KeyError(f"'{word}' is not a word of the traced prompt {text!r}")
        tokens = self._tokens(text)
        return [
            pos
            for pos, tok in enumerate(tokens)
            if tok.end > tok.start
            and (encoder is None or tok.encoder == encoder)
            and any(tok.start < end and tok.end > start for start, end in spans)
        ]

    def word_maps(self, word: str, prompt: int = 0, encoder: str | None = None) -> xr.DataArray:
        """Returns image→text attention to `word` in (y, x) for every step, layer and head: the mean of its tokens'
        maps.

        With classifier-free guidance the transformer's batch is [unconditional, conditional]: the conditional row is
        used.
        """
        positions = self.word_positions(word, prompt, encoder)
        maps = self.capture.maps("image_to_text")
        row = maps.sizes["batch"] - len(self.prompts) + prompt
        return maps.isel(batch=row, text_token=positions).mean("text_token").rename(f"{word}")


@contextlib.contextmanager
def trace(pipe, layers=None, head_mean: bool = False, diagnostics: bool = False) -> Iterator[Trace]:
    """Captures image→text attention (all text tokens) of every forward of `pipe`'s transformer inside the context."""
    traced = Trace(pipe, None)  # type: ignore[arg-type]
    encode_prompt = pipe.encode_prompt

    def remember(*args, **kwargs):  # the first encoding is the prompt's (Qwen-Image encodes its negative second)
        prompt = kwargs.get("prompt", args[0] if args else None)
        if not traced.prompts:
            traced.prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        return encode_prompt(*args, **kwargs)

    pipe.encode_prompt = remember
    try:
        with capture_attention(
            pipe.transformer, layers, ("image_to_text",), head_mean=head_mean, diagnostics=diagnostics
        ) as capture:
            traced.capture = capture
            yield traced
    finally:
        del pipe.encode_prompt
