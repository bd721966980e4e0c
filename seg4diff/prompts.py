"""Prompts from class names (gt_classes, vocabulary, caption) and which text positions are each class's words."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from seg4diff.backbones.backbone import PromptEncoding
from seg4diff.config import PromptParams
from seg4diff.errors import ConfigError


@dataclass(frozen=True)
class ClassSpan:
    class_id: int
    start: int  # character span of the class phrase in the prompt
    end: int


def class_phrase(name: str) -> str:
    """Returns the words a class is prompted with: its name cut at the first '-' (Seg4Diff's convention)."""
    return name.split("-")[0].strip()


@dataclass(frozen=True)
class PromptStyle:
    """How prompts are built from class names (built from the `prompt` params group by `prompt_style`)."""

    mode: str  # gt_classes | vocabulary | caption
    separator: str
    background: str  # "word": background is a prompted class; "threshold": left out, predicted by threshold
    columns: str  # "all", or one encoder ("clip", "t5") whose token columns make the class maps


def build_prompt(
    style: PromptStyle, present: np.ndarray, class_names: list[str], caption: str
) -> tuple[str, list[ClassSpan]]:
    """Returns (prompt, class spans) for one sample.

    gt_classes: the present classes' names joined by the separator (the oracle protocol); vocabulary: every class;
    caption: the caption, with each class phrase found in it as a whole-word match. With background "threshold",
    class 0 ("background") is never prompted.
    """
    mode = style.mode
    if mode == "caption":
        spans = []
        for class_id, name in sorted(enumerate(class_names), key=lambda item: -len(item[1])):
            for match in re.finditer(rf"\b{re.escape(class_phrase(name))}\b", caption):
                if not any(s.start < match.end() and match.start() < s.end for s in spans):
                    spans.append(ClassSpan(class_id, match.start(), match.end()))
        return caption, sorted(spans, key=lambda s: s.start)
    ids = np.flatnonzero(present) if mode == "gt_classes" else np.arange(len(class_names))
    if style.background == "threshold" and class_names and class_names[0] == "background":
        ids = ids[ids != 0]
    prompt, spans = "", []
    for class_id in ids:
        phrase = class_phrase(class_names[class_id])
        start = len(prompt) + (len(style.separator) if prompt else 0)
        prompt = f"{prompt}{style.separator}{phrase}" if prompt else phrase
        spans.append(ClassSpan(int(class_id), start, start + len(phrase)))
    return prompt, spans


@dataclass
class TokenSlots:
    position: np.ndarray  # (slots,) text positions, −1 for empty slots
    class_id: np.ndarray
    encoder: np.ndarray
    text: np.ndarray


def column_positions(encoding: PromptEncoding, index: int, columns: str) -> list[int]:
    """Returns the text positions of prompt `index` in the chosen encoder's columns ("all": every position)."""
    return [pos for pos, token in enumerate(encoding.tokens[index]) if columns == "all" or token.encoder == columns]


def token_slots(
    encoding: PromptEncoding, index: int, spans: list[ClassSpan], keep: str, slots: int, name: str, columns: str
) -> TokenSlots:
    """Returns the text positions kept for one prompt (class tokens, or all) in the chosen encoder's columns, with
    their class ids, padded to `slots`."""
    tokens = encoding.tokens[index]
    encoder = None if columns == "all" else columns
    if encoder is not None and not any(token.encoder == encoder for token in tokens):
        found = sorted({token.encoder for token in tokens})
        raise ConfigError(
            f"prompt.columns is '{columns}' but this model's text positions come from {found}: choose one of them or "
            "'all'"
        )
    class_of = {}
    for span in spans:
        for position in encoding.positions(index, span.start, span.end, encoder):
            class_of.setdefault(position, span.class_id)
    positions = sorted(class_of) if keep == "class" else column_positions(encoding, index, columns)
    if len(positions) > slots:
        raise ConfigError(
            f"sample {name}: {len(positions)} tokens to keep but extract.max_tokens is {slots}: raise "
            "extract.max_tokens"
        )
    result = TokenSlots(
        np.full(slots, -1, np.int32),
        np.full(slots, -1, np.int16),
        np.full(slots, "", object),
        np.full(slots, "", object),
    )
    for slot, position in enumerate(positions):
        result.position[slot] = position
        result.class_id[slot] = class_of.get(position, -1)
        result.encoder[slot] = tokens[position].encoder
        result.text[slot] = tokens[position].token
    return result


def prompt_style(prompt: PromptParams, mode: str) -> PromptStyle:
    """Returns the style of prompts in `mode` (gt_classes | vocabulary | caption) built as the `prompt` group says."""
    return PromptStyle(mode, prompt.separator, prompt.background, prompt.columns)
