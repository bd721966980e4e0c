"""Where a prompt's own tokens sit in the text sequence each recorded family's attention holds (chat templates, system
prompts, dropped prefixes, register tokens, glyph bytes, padding): one function per family, each a list per prompt
with one `TextToken` per attention text position — the prompt's characters it spans, (0, 0) for everything else."""

from __future__ import annotations

import re

from diffusers.models.transformers.transformer_z_image import SEQ_MULTI_OF

from seg4diff.backbones.backbone import TextToken, _token_spans


def _template_tokens(tokenizer, texts: list[str], starts: list[int], lengths: list[int], encoder: str, **kwargs):
    """Returns, per text, every token of `tokenizer(texts, **kwargs)` with its character span relative to the
    prompt embedded at texts[i][starts[i]:starts[i] + lengths[i]] ((0, 0) outside it: template, special, padding)."""
    encoding = tokenizer(texts, return_offsets_mapping=True, **kwargs)
    rows = []
    for ids, offsets, start, length in zip(encoding["input_ids"], encoding["offset_mapping"], starts, lengths):
        names = tokenizer.convert_ids_to_tokens(ids)
        row = []
        for name, (a, b) in zip(names, offsets):
            inside = b > a and a < start + length and b > start
            span = (max(a - start, 0), min(b - start, length)) if inside else (0, 0)
            row.append(TextToken(encoder, name, *span))
        rows.append(row)
    return rows


def _blank(encoder: str) -> TextToken:
    return TextToken(encoder, "", 0, 0)


def flux2_tokens(pipe, prompts: list[str], text_length: int) -> list[list[TextToken]]:
    """FLUX.2: Mistral's chat template (BOS, FLUX.2's system message, [INST] prompt [/INST]) padded to text_length."""
    from diffusers.pipelines.flux2.pipeline_flux2 import format_input

    cleaned = [prompt.replace("[IMG]", "") for prompt in prompts]  # as format_input cleans it
    texts = [
        pipe.tokenizer.apply_chat_template(message, tokenize=False)
        for message in format_input(prompts, pipe.system_message)
    ]
    starts = [text.rindex(prompt) for text, prompt in zip(texts, cleaned)]  # the user message comes last
    return _template_tokens(
        pipe.tokenizer,
        texts,
        starts,
        [len(p) for p in cleaned],
        "mistral",
        add_special_tokens=False,
        padding="max_length",
        max_length=text_length,
        truncation=True,
    )


def qwenimage_tokens(pipe, prompts: list[str], text_length: int) -> list[list[TextToken]]:
    """Qwen-Image: Qwen's chat template, its first `prompt_template_encode_start_idx` tokens (the system prefix)
    dropped, each prompt's valid tokens kept and padded to the batch's longest, at most text_length."""
    template, drop = pipe.prompt_template_encode, pipe.prompt_template_encode_start_idx
    start = template.index("{}")
    rows = _template_tokens(
        pipe.tokenizer,
        [template.format(prompt) for prompt in prompts],
        [start] * len(prompts),
        [len(p) for p in prompts],
        "qwen",
        max_length=pipe.tokenizer_max_length + drop,
        truncation=True,
    )
    kept = [row[drop:][:text_length] for row in rows]
    longest = max(len(row) for row in kept)
    return [row + [_blank("qwen")] * (longest - len(row)) for row in kept]


def t5_tokens(pipe, prompts: list[str], text_length: int) -> list[list[TextToken]]:
    """T5 (Chroma) or UMT5 (AuraFlow): padded to text_length; AuraFlow's register tokens come first."""
    registers = getattr(pipe.transformer, "register_tokens", None)
    before = [_blank("register")] * (0 if registers is None else registers.shape[1])
    return [before + row for row in _token_spans(pipe.tokenizer, prompts, text_length, "t5")]


def longcat_tokens(pipe, prompts: list[str], text_length: int) -> list[list[TextToken]]:
    """LongCat-Image: each prompt's own tokens, no template (the encoder's chat prefix and suffix are cut from its
    output), quoted spans a character at a time (`split_quotation`), truncated and padded to `tokenizer_max_length`,
    the pipeline's fixed text length."""
    from diffusers.pipelines.longcat_image.pipeline_longcat_image import split_quotation

    tokenizer, length = pipe.tokenizer, pipe.tokenizer_max_length
    if text_length != length:
        raise ValueError(f"LongCat-Image's text length is its tokenizer_max_length ({length}), not {text_length}")
    rows = []
    for prompt in prompts:
        row, start = [], 0
        for part, quoted in split_quotation(prompt):
            pieces = [(start + i, char) for i, char in enumerate(part)] if quoted else [(start, part)]
            for offset, piece in pieces:
                encoding = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
                names = tokenizer.convert_ids_to_tokens(encoding["input_ids"])
                spans = encoding["offset_mapping"]
                row += [TextToken("qwen", name, offset + a, offset + b) for name, (a, b) in zip(names, spans)]
            start += len(part)
        row = row[:length]
        padding = [_blank("qwen")] * (length - len(row))
        rows.append(padding + row if tokenizer.padding_side == "left" else row + padding)
    return rows


def ovis_tokens(pipe, prompts: list[str], text_length: int) -> list[list[TextToken]]:
    """Ovis-Image: Qwen3's chat template (no thinking) over its system prompt + the prompt, padded to text_length +
    `user_prompt_begin_id`, whose first `user_prompt_begin_id` (28) tokens are dropped."""
    texts, drop = pipe._get_messages(prompts), pipe.user_prompt_begin_id
    starts = [text.index(pipe.system_prompt + prompt) + len(pipe.system_prompt) for text, prompt in zip(texts, prompts)]
    rows = _template_tokens(
        pipe.tokenizer,
        texts,
        starts,
        [len(p) for p in prompts],
        "qwen",
        padding="max_length",
        truncation=True,
        max_length=text_length + drop,
        add_special_tokens=False,
    )
    return [row[drop:] for row in rows]


def ernie_tokens(pipe, prompts: list[str], text_length: int) -> list[list[TextToken]]:
    """ERNIE-Image: each prompt tokenized alone with the tokenizer's special tokens (Mistral's BOS), one blank for an
    empty one, at most text_length, zero-padded to the batch's longest (the transformer masks the padding)."""
    rows = _template_tokens(
        pipe.tokenizer, prompts, [0] * len(prompts), [len(p) for p in prompts], "mistral", truncation=True
    )
    kept = [(row or [_blank("mistral")])[:text_length] for row in rows]  # the pipeline's [BOS] for no tokens
    longest = max(len(row) for row in kept)
    return [row + [_blank("mistral")] * (longest - len(row)) for row in kept]


def cogview4_tokens(pipe, prompts: list[str], text_length: int) -> list[list[TextToken]]:
    """CogView4: GLM-4's tokens ([gMASK] <sop> prompt) padded to the batch's longest (GLM-4 pads left), then
    left-padded with pad tokens to a multiple of 16; no mask, neither to GLM nor to the transformer."""
    rows = _template_tokens(
        pipe.tokenizer, prompts, [0] * len(prompts), [len(p) for p in prompts], "glm",
        padding="longest", max_length=text_length, truncation=True, add_special_tokens=True,
    )  # fmt: skip
    return [[_blank("glm")] * (-len(row) % 16) + row for row in rows]


_GLYPH_QUOTES = (r"\'(.*?)\'", r"\"(.*?)\"", r"‘(.*?)’", r"“(.*?)”")  # extract_glyph_text's patterns, in its order


def _glyph_tokens(pipe, prompt: str) -> tuple[list[TextToken], list[int]]:
    """HunyuanImage: the ByT5 bytes of the prompt's glyph text ('Text "q". ' per quoted q, as extract_glyph_text
    writes it) padded to tokenizer_2_max_length, each byte spanning its character of the prompt where it is quoted
    text, and the tokenizer's mask (none valid where nothing is quoted: the pipeline passes zeros)."""
    length = pipe.tokenizer_2_max_length
    quoted = [match.span(1) for pattern in _GLYPH_QUOTES for match in re.finditer(pattern, prompt)]
    if not quoted:
        return [_blank("byt5")] * length, [0] * length
    text, chars = "", []  # the glyph text and, per character, its index in the prompt (None: the template's)
    for a, b in quoted:
        text += f'Text "{prompt[a:b]}". '
        chars += [None] * 6 + list(range(a, b)) + [None] * 3
    per_byte = [k for ch, k in zip(text, chars) for _ in ch.encode("utf-8")]  # ByT5 tokens are the UTF-8 bytes
    encoding = pipe.tokenizer_2(text, padding="max_length", max_length=length, truncation=True)
    names = pipe.tokenizer_2.convert_ids_to_tokens(encoding["input_ids"])
    kept = sum(encoding["attention_mask"]) - 1  # the bytes kept, before </s>
    spans = [(k, k + 1) if i < kept and (k := per_byte[i]) is not None else (0, 0) for i in range(length)]
    return [TextToken("byt5", name, *span) for name, span in zip(names, spans)], encoding["attention_mask"]


def hunyuanimage_tokens(pipe, prompts: list[str], text_length: int) -> list[list[TextToken]]:
    """HunyuanImage-2.1: Qwen's template padded to tokenizer_max_length + 34 and its first 34 tokens (the system
    prefix) dropped (the pipeline's text length is fixed: `text_length` unused); with the transformer's ByT5
    projection, each prompt's joint text is its valid glyph bytes, its valid Qwen tokens, the glyph padding, the Qwen
    padding (the transformer reorders them so, per sample)."""
    template, drop = pipe.prompt_template_encode, pipe.prompt_template_encode_start_idx
    texts, start = [template.format(prompt) for prompt in prompts], template.index("{}")
    kwargs = {"max_length": pipe.tokenizer_max_length + drop, "padding": "max_length", "truncation": True}
    rows = _template_tokens(pipe.tokenizer, texts, [start] * len(prompts), [len(p) for p in prompts], "qwen", **kwargs)
    masks = pipe.tokenizer(texts, **kwargs)["attention_mask"]
    qwen = [(row[drop:], mask[drop:]) for row, mask in zip(rows, masks)]
    if pipe.transformer.context_embedder_2 is None:  # the transformer then ignores the glyph text
        return [row for row, _ in qwen]
    joint = []
    for (row, mask), (glyph, glyph_mask) in zip(qwen, (_glyph_tokens(pipe, prompt) for prompt in prompts)):
        valid = [t for t, m in zip(glyph, glyph_mask) if m] + [t for t, m in zip(row, mask) if m]
        joint.append(valid + [t for t, m in zip(glyph, glyph_mask) if not m] + [t for t, m in zip(row, mask) if not m])
    return joint


def zimage_tokens(pipe, prompts: list[str], text_length: int) -> list[list[TextToken]]:
    """Z-Image: Qwen3's chat template (one user message, the generation prompt, thinking on), truncated to
    text_length; the padding dropped, each caption padded to a multiple of SEQ_MULTI_OF (32) with the transformer's
    pad token, then to the batch's longest (masked)."""
    texts = [
        pipe.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=True
        )
        for prompt in prompts
    ]
    starts = [text.index(prompt) for text, prompt in zip(texts, prompts)]  # the user message is the template's first
    rows = _template_tokens(
        pipe.tokenizer, texts, starts, [len(p) for p in prompts], "qwen", max_length=text_length, truncation=True
    )
    longest = max(len(row) + (-len(row)) % SEQ_MULTI_OF for row in rows)
    return [row + [_blank("qwen")] * (longest - len(row)) for row in rows]


def lumina2_tokens(pipe, prompts: list[str], text_length: int) -> list[list[TextToken]]:
    """Lumina 2: Gemma's BOS, then `system_prompt + " <Prompt Start> " + prompt`, truncated to text_length; the
    transformer keeps each caption's valid tokens (before the image's), padded here to the batch's longest."""
    head = pipe.system_prompt + " <Prompt Start> "
    rows = _template_tokens(
        pipe.tokenizer, [head + prompt for prompt in prompts], [len(head)] * len(prompts),
        [len(p) for p in prompts], "gemma", max_length=text_length, truncation=True,
    )  # fmt: skip
    longest = max(len(row) for row in rows)
    return [row + [_blank("gemma")] * (longest - len(row)) for row in rows]
