"""The params groups of the stages that read attention stores: score, select, causal, explore and readouts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from seg4diff.config.group import Group

__all__ = ["CausalParams", "ExploreParams", "ReadoutsParams", "ScoreParams", "SelectParams"]


class ScoreParams(Group):
    sigmas: list[float] | None = Field(None, description="noise levels σ of the store to score (None: all stored)")
    bootstrap_resamples: int = Field(1000, ge=10)
    seed: int = 0
    examples: int = Field(4, ge=0, description="samples shown in the example attention-map grid")
    output: str = "results/layer_scores.csv"


class SelectParams(Group):
    rule: Literal["best_miou", "best_lower_bound"] = Field(
        "best_miou", description="highest head-mean mIoU, or highest lower end of its 95% interval"
    )
    direction: Literal["image_to_text", "text_to_image"] = "image_to_text"
    force_layer: int | None = Field(None, description="pin the expert layer (e.g. 9 for SD3, as in the paper)")
    force_sigma: float | None = Field(None, description="pin the noise level σ (must be one of the scored sigmas)")
    output: str = "results/expert.json"


class CausalParams(Group):
    split: str = Field(
        "test",
        description="captions generated from and images the flow loss is measured on: never where the expert is chosen",
    )
    layers: list[int] | None = Field(None, description="layers perturbed one at a time (None: every layer)")
    perturbations: list[Literal["blur", "mean", "word_shuffle", "shuffle"]] = Field(
        ["blur", "mean", "word_shuffle"],
        min_length=1,
        description="blur: the paper's Gaussian blur of each word's map; mean: its spatial mean; word_shuffle (the "
        "control): each caption's own words deranged, padding untouched; shuffle: all text positions permuted",
    )
    blur_sigma: float = Field(2.0, gt=0, description="Gaussian σ of the blur, in image tokens")
    permutations: int = Field(
        2, ge=1, description="independent draws of word_shuffle / shuffle, each caption's effect averaged over them"
    )
    doses: list[float] = Field(
        [0.5, 1.0],
        min_length=1,
        description="matched strengths besides the full one: target L1 = dose × the weakest layer's full-strength L1 "
        "(per perturbation), each layer's α set to reach it on the calibration generation's forwards",
    )
    calibration_samples: int = Field(
        32,
        ge=1,
        description="captions whose unperturbed generation's forwards, replayed, calibrate α (held on the CPU: a few "
        "for SD3/FLUX)",
    )
    captions: int = Field(
        48, ge=2, description="captions generated, each with and without the perturbation (same noise)"
    )
    batch_size: int = Field(64, ge=1, description="captions generated together")
    generation_steps: int = Field(20, ge=1)
    guidance: float = 4.0
    flow_samples: int = Field(64, ge=2, description="held-out images for the flow-loss increase at fixed noise")
    flow_sigmas: list[float] = [0.3, 0.5, 0.7]
    bootstrap_resamples: int = Field(10000, ge=100, description="enough for Bonferroni tails over layers × kinds")
    primary_contrast: str = Field(
        "word_shuffle.object_recall",
        description="the pre-registered contrast, perturbation.metric at the largest dose: expert layer − the mean of "
        "the other layers, paired over captions",
    )
    seed: int = 0
    output: str = "results/causal.csv"
    work_dir: str = Field(
        "models/causal",
        description="finished generations of the run, kept so that an interrupted run resumes (cleared when done)",
    )

    @field_validator("doses")
    @classmethod
    def _doses_in_unit_interval(cls, doses: list[float]) -> list[float]:
        if not all(0 < dose <= 1 for dose in doses):
            raise ValueError(f"every dose must be in (0, 1] (a fraction of the weakest layer's full L1), got {doses}")
        return sorted(set(doses))


class ExploreParams(Group):
    samples: int = Field(12, ge=1, description="samples embedded in the page (its size grows with them)")
    display_size: int = Field(128, ge=8, description="longest side at which labels and predictions are drawn")
    output: str = "results/explorer.html"


class ReadoutsParams(Group):
    split: str = Field(
        "test",
        description="the report split: every readout is chosen on extract.split's store and scored here, on a store "
        "of the same blocks, heads and σ",
    )
    store: str = Field("data/readouts/attention.zarr", description="the report split's attention store")
    output: str = Field("results/readouts.csv", description="one row per readout (its figure: the same name, .png)")
    max_samples: int | None = Field(None, ge=1, description="report images (None: the whole split)")
    top_k: int = Field(
        3,
        ge=1,
        description="blocks the top-k and concept-attention readouts average (the k best on the selection split)",
    )
    concept_tokens: Literal["first", "mean"] = Field(
        "first",
        description="a ConceptAttention concept's embedding: its name's first sub-word token (ConceptAttention's rule) "
        "or the mean of its tokens",
    )
    bootstrap_resamples: int = Field(10_000, ge=100, description="resamples of the paired bootstrap over images")
    seed: int = 0
