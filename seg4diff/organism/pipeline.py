"""The Shapes organism: a tiny SD3 MM-DiT (the real diffusers class) in pixel space with a word-level text encoder.

Saved in a standard layout that `seg4diff.backbones.backbone` loads like SD3 and FLUX:
    organism.json        marker + text length
    transformer/         diffusers SD3Transformer2DModel.save_pretrained
    text_encoder/        transformers CLIPTextModel (no layers: token + learned position embeddings)
    tokenizer/           transformers PreTrainedTokenizerFast (word level)
    scheduler/           diffusers FlowMatchEulerDiscreteScheduler
Positions matter: without them "red circle and blue square" would equal "blue circle and red square".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from seg4diff.config import ArchitectureParams

MARKER = "organism.json"
PAD, UNK = "[PAD]", "[UNK]"


def word_tokenizer(words: list[str], text_length: int) -> PreTrainedTokenizerFast:
    """Returns a word-level tokenizer (one token per whitespace word; unknown words → [UNK])."""
    vocab = {PAD: 0, UNK: 1}
    for word in words:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, unk_token=UNK, model_max_length=text_length)


@dataclass(frozen=True)
class Architecture:
    """The organism's shape: pretrain.architecture (whose fields are the defaults) plus the working resolution."""

    num_layers: int
    num_attention_heads: int
    attention_head_dim: int
    image_size: int
    text_length: int
    text_layers: int
    pooled: str  # "none": AdaLN sees only the timestep, so the caption reaches the image through attention alone
    patch_size: int = 2  # pixels per token side: the organism's 32×32 pixels → 16×16 tokens

    @classmethod
    def from_params(cls, params: ArchitectureParams, resolution: int | list[int]) -> Architecture:
        """`resolution`: prepare.resolution; the position table covers its longer side (SD3 crops it for the other)."""
        return cls(image_size=resolution if isinstance(resolution, int) else max(resolution), **params.model_dump())


class OrganismPipeline:
    """Transformer + text encoder + tokenizer + scheduler of the organism, with SD3-like prompt encoding."""

    def __init__(
        self,
        transformer: SD3Transformer2DModel,
        text_encoder: CLIPTextModel,
        tokenizer: PreTrainedTokenizerFast,
        scheduler: FlowMatchEulerDiscreteScheduler,
        text_length: int,
        pooled: str = "mean",
    ):
        self.transformer, self.text_encoder, self.tokenizer = transformer, text_encoder, tokenizer
        self.scheduler, self.text_length, self.pooled = scheduler, text_length, pooled

    @classmethod
    def build(cls, words: list[str], arch: Architecture, seed: int) -> OrganismPipeline:
        """Returns a randomly initialised organism (seeded)."""
        torch.manual_seed(seed)
        width = arch.num_attention_heads * arch.attention_head_dim  # caption_projection_dim must equal heads × dim
        tokenizer = word_tokenizer(words, arch.text_length)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=width,
                num_hidden_layers=arch.text_layers,
                num_attention_heads=arch.num_attention_heads,
                intermediate_size=4 * width,
                max_position_embeddings=arch.text_length,
                pad_token_id=0,
                bos_token_id=0,
                eos_token_id=0,
            )
        )
        transformer = SD3Transformer2DModel(
            sample_size=arch.image_size,
            patch_size=arch.patch_size,
            in_channels=3,
            out_channels=3,
            num_layers=arch.num_layers,
            num_attention_heads=arch.num_attention_heads,
            attention_head_dim=arch.attention_head_dim,
            joint_attention_dim=width,
            caption_projection_dim=width,
            pooled_projection_dim=width,
            pos_embed_max_size=arch.image_size // arch.patch_size,
        )
        return cls(
            transformer,
            text_encoder,
            tokenizer,
            FlowMatchEulerDiscreteScheduler(shift=1.0),
            arch.text_length,
            arch.pooled,
        )

    @property
    def modules(self) -> list[torch.nn.Module]:
        return [self.transformer, self.text_encoder]

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> OrganismPipeline:
        for module in self.modules:
            module.to(device=device, dtype=dtype)
        return self

    def tokenize(self, prompts: list[str]) -> dict:
        return self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.text_length,
            truncation=True,
            return_offsets_mapping=True,
            return_tensors="pt",
        )

    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (embeddings (batch, text_length, width), pooled = mean of the non-padding embeddings)."""
        tokens = self.tokenize(prompts)
        ids = tokens["input_ids"].to(self.text_encoder.device)
        embeds = self.text_encoder(input_ids=ids).last_hidden_state
        mask = (ids != self.tokenizer.pad_token_id).to(embeds.dtype)[..., None]
        pooled = (embeds * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        if self.pooled == "none":
            pooled = torch.zeros_like(pooled)
        return embeds, pooled

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.transformer.save_pretrained(directory / "transformer", safe_serialization=True)
        self.text_encoder.save_pretrained(directory / "text_encoder", safe_serialization=True)
        self.tokenizer.save_pretrained(directory / "tokenizer")
        self.scheduler.save_pretrained(directory / "scheduler")
        (directory / MARKER).write_text(
            json.dumps(
                {"_class_name": "OrganismPipeline", "text_length": self.text_length, "pooled": self.pooled}, indent=2
            )
        )

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: torch.dtype = torch.float32) -> OrganismPipeline:
        directory = Path(directory)
        meta = json.loads((directory / MARKER).read_text())
        transformer = SD3Transformer2DModel.from_pretrained(
            directory / "transformer", torch_dtype=dtype, use_safetensors=True
        )
        text_encoder = CLIPTextModel.from_pretrained(directory / "text_encoder", dtype=dtype, use_safetensors=True)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(directory / "tokenizer")
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(directory / "scheduler")
        return cls(
            transformer.eval(),
            text_encoder.eval(),
            tokenizer,
            scheduler,
            meta["text_length"],
            meta.get("pooled", "mean"),
        )


def is_organism(directory: str | Path) -> bool:
    return (Path(directory) / MARKER).is_file()
