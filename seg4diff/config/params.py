"""The typed model of `params.yaml`: one pydantic model per params group, validated once at the edge."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from seg4diff.config.analysis import CausalParams, ExploreParams, ReadoutsParams, ScoreParams, SelectParams
from seg4diff.config.data import DataParams
from seg4diff.config.group import Group
from seg4diff.data.partition import prepared_names

__all__ = [
    "ArchitectureParams",
    "EvaluateParams",
    "ExtractParams",
    "FinetuneParams",
    "ModelParams",
    "OrchestrationParams",
    "Params",
    "PrepareParams",
    "PretrainParams",
    "PromptParams",
    "TrackingParams",
]


class ModelParams(Group):
    path: str = Field(description="hub id or local directory of a diffusers pipeline")
    local_files_only: bool = True
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "cpu"
    text_length: int | None = Field(
        None,
        ge=1,
        description="text tokens the pipeline gives the transformer: its max_sequence_length (None: the family's "
        "default: 256 SD3, 512 FLUX; 77 zero rows for SD3 without T5)",
    )
    call: dict = Field(
        {},
        description="extra arguments of every call of the pipeline, e.g. FLUX.2's text_encoder_out_layers",
    )
    t5: bool = Field(
        True,
        description="SD3/SD3.5: load the T5 encoder; false runs without it as the authors do "
        "(text_encoder_3=None: 77 CLIP + 77 zero rows, 4096 + 154 tokens at 1024²)",
    )


class PrepareParams(Group):
    splits: list[str] = ["train", "val", "test"]
    resolution: int | list[int] = Field(
        32,
        description="working resolution of images: N (square, as the authors) or [height, width] (e.g. Cityscapes' "
        "2:1 as [512, 1024]); multiples of 16",
    )
    label_resolution: int | Literal["native"] = Field(
        "native",
        description="native: label maps kept at each image's own size, masks upsampled to it and every metric "
        "computed there; N: resized to N×N (nearest)",
    )
    partition: dict[str, float] = Field(
        {},
        description="splits divided by a hash of each image id into <split>-select (this share: every choice is made "
        "there) and <split>-report (the rest: every number is reported there), prepared instead of <split>",
    )
    max_samples: int | dict[str, int] | None = Field(
        None,
        description="cap per prepared split, the first in the source's order: N for every split, or {split: N} "
        "(e.g. {train: 24000}: the images MAGNET's steps × batch size read of COCO train2017); None: all",
    )
    on_error: Literal["skip", "fail"] = "skip"
    output: str = "data/prepared"

    @model_validator(mode="after")
    def _partitioned_splits_are_prepared(self) -> PrepareParams:
        unknown = sorted(set(self.partition) - set(self.splits))
        if unknown:
            raise ValueError(f"partition names splits {unknown} that are not in splits {self.splits}")
        bad = {split: share for split, share in self.partition.items() if not 0 < share < 1}
        if bad:
            raise ValueError(f"partition shares must lie strictly between 0 and 1, got {bad}")
        caps = self.max_samples if isinstance(self.max_samples, dict) else {"every split": self.max_samples or 1}
        if bad := {split: cap for split, cap in caps.items() if cap < 1}:
            raise ValueError(f"max_samples must be at least 1, got {bad}")
        if isinstance(self.max_samples, dict) and (unknown := sorted(set(self.max_samples) - set(self.prepared))):
            raise ValueError(f"max_samples names splits {unknown} that are not prepared ({self.prepared})")
        return self

    def cap(self, split: str) -> int | None:
        """The most samples prepared of `split` (a prepared name), None: all."""
        return self.max_samples.get(split) if isinstance(self.max_samples, dict) else self.max_samples

    @property
    def prepared(self) -> list[str]:
        """The prepared stores' names: each split, or its -select and -report parts where it is partitioned."""
        return prepared_names(self.splits, self.partition)

    @field_validator("resolution")
    @classmethod
    def _multiple_of_16(cls, value: int | list[int]) -> int | list[int]:
        if isinstance(value, list) and len(value) != 2:
            raise ValueError(f"must be one size or [height, width], got {value}")
        for side in (value,) if isinstance(value, int) else value:
            if side <= 0 or side % 16:
                raise ValueError(f"must be a positive multiple of 16, got {side}")
        return value

    @field_validator("label_resolution")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value <= 0:
            raise ValueError(f"must be 'native' or a positive size, got {value}")
        return value

    @property
    def size(self) -> tuple[int, int]:
        """The working (height, width)."""
        return (
            (self.resolution, self.resolution)
            if isinstance(self.resolution, int)
            else (self.resolution[0], self.resolution[1])
        )


class ArchitectureParams(Group):
    num_layers: int = Field(6, ge=2)
    num_attention_heads: int = Field(4, ge=1)
    attention_head_dim: int = Field(16, ge=4)
    patch_size: int = Field(2, ge=1, description="pixels per image-token side (32 px / 2 → a 16×16 token grid)")
    text_length: int = Field(16, ge=4, description="word tokens in the joint sequence")
    text_layers: int = Field(
        1, ge=0, description="causal transformer layers of the text encoder (0: token + position embeddings)"
    )
    pooled: Literal["mean", "none"] = Field(
        "none", description="pooled text vector for AdaLN: mean of the words, or none (zeros)"
    )


class PretrainParams(Group):
    output: str = Field("seg4diff/assets/organism", description="where the trained organism is saved")
    work_dir: str = Field("models/pretrain", description="checkpoints of the run (resumed from the newest)")
    seed: int = 0
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(48, ge=1)
    lr: float = Field(0.001, gt=0)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    caption_dropout: float = Field(0.1, ge=0, le=1)
    log_every: int = Field(25, ge=1)
    checkpoint_every: int = Field(250, ge=1, description="steps between checkpoints in work_dir (and one at the end)")
    architecture: ArchitectureParams = ArchitectureParams()
    num_samples: int = Field(32, ge=1, description="validation captions generated for the sample grid and colour check")
    sample_steps: int = Field(30, ge=1)
    guidance: float = 4.0


class PromptParams(Group):
    """How prompts are built from class names: read by extract, score, finetune and evaluate alike."""

    separator: str = Field(
        " and ",
        description="between class names in a prompt (Seg4Diff: a space; the organism reads "
        "'red circle and blue square', as in its captions)",
    )
    background: Literal["word", "threshold"] = Field(
        "threshold", description="prompt 'background' as a word, or leave it out and predict it by background_threshold"
    )
    background_threshold: float = Field(
        0.2,
        ge=0,
        le=1,
        description=(
            "with background 'threshold': a pixel is background when its best class map is below this fraction of the "
            "image's highest class-map value (chosen on val for the organism)"
        ),
    )

    columns: Literal["all", "clip", "t5"] = Field(
        "all",
        description=(
            "whose token columns make a class map: every encoder's, or only CLIP's (the authors' SD3/SD3.5 setup) or "
            "T5's; "
            "the unsupervised protocol reads the same columns"
        ),
    )

    @property
    def threshold(self) -> float | None:
        """background_threshold when prompts leave background out, else None (background is a prompted word)."""
        return self.background_threshold if self.background == "threshold" else None


class ExtractParams(Group):
    split: str = Field(
        "val", description="prepared split whose attention is extracted (layer selection never sees test)"
    )
    output: str = "data/attention.zarr"
    prompt: Literal["gt_classes", "vocabulary", "caption"] = "gt_classes"
    num_inference_steps: int = Field(28, ge=1)
    steps_from_end: list[int] = Field(
        [8],
        description=(
            "denoising steps of a num_inference_steps schedule counted FROM THE END, as the authors' timesteps[-8] "
            "(SD3, 28 steps, shift 3: σ = 0.5151)"
        ),
    )
    sigmas: list[float] | None = Field(
        [0.1, 0.3, 0.5, 0.7], description="noise levels in (0, 1]; when set, used instead of steps_from_end"
    )
    layers: list[int] | None = Field(None, description="layers to capture (None: all)")
    directions: list[Literal["image_to_text", "text_to_image"]] = ["image_to_text", "text_to_image"]
    head_mean: bool = False
    diagnostics: bool = Field(True, description="also store text-mass and entropy per query (cheap: no N×N matrix)")
    tokens: Literal["class", "all"] = Field("class", description="keep only class-name tokens, or every text token")
    max_tokens: int = Field(8, ge=1, description="token slots per sample")
    batch_size: int = Field(16, ge=1)
    workers: int = Field(1, ge=1, description="Prefect tasks extracting disjoint sample ranges in parallel")
    max_samples: int | None = Field(None, ge=1)
    seed: int = 0

    @field_validator("sigmas")
    @classmethod
    def _sigmas_in_range(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and not all(0 < s <= 1 for s in value):
            raise ValueError(f"every sigma must lie in (0, 1], got {value}")
        return value


class FinetuneParams(Group):
    split: str = Field("train", description="the prepared split MAGNET trains on (COCO: train2017, as the paper)")
    val_split: str = Field(
        "val", description="where the best checkpoint is chosen: a selection split, never the reported one"
    )
    mode: Literal["gt_classes", "caption"] = "gt_classes"
    rank: int = Field(16, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["to_q", "to_k", "to_v", "to_out.0"]
    lambda_flow: float = Field(
        3.0, ge=0, description="the paper: 1.0; on the organism 3.0 keeps the flow loss within 2%"
    )
    mask_loss: Literal["focal_dice", "predictor"] = Field(
        "focal_dice",
        description=(
            "focal_dice: the paper's focal + dice on the expert layer's head-mean logits; predictor (gt_classes mode): "
            "the "
            "cross-entropy of the zero-shot predictor's decision (argmax class, background below "
            "prompt.background_threshold "
            "× the peak) on its head-mean probabilities"
        ),
    )
    lambda_focal: float = Field(0.1, ge=0)
    lambda_dice: float = Field(0.2, ge=0)
    lambda_predictor: float = Field(1.0, ge=0, description="weight of the predictor loss (mask_loss: predictor)")
    focal_alpha: float = Field(0.25, ge=0, le=1, description="focal loss class weight (the paper's)")
    focal_gamma: float = Field(2.0, ge=0, description="focal loss focusing exponent (the paper's)")
    min_mask_fraction: float = Field(
        0.005, ge=0, description="caption mode: ground-truth masks smaller than this are dropped"
    )
    steps: int = Field(1500, ge=1)
    batch_size: int = Field(8, ge=1)
    grad_accumulation: int = Field(1, ge=1)
    lr: float = Field(0.0001, gt=0)
    weight_decay: float = Field(0.0001, ge=0)
    warmup_steps: int = Field(20, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    sigma_logit_mean: float = Field(0.0, description="training noise levels: σ = shift(sigmoid(N(mean, std)))")
    sigma_logit_std: float = Field(0.5, gt=0)
    sigma_shift: float = Field(1.0, gt=0, description="shift of the sampled σ: s·u / (1 + (s − 1)·u); 3.0 for SD3")
    mask_max_sigma: float | None = Field(
        0.5,
        gt=0,
        le=1,
        description=("mask losses only on samples noised at σ ≤ this (null: all); attention cannot segment pure noise"),
    )
    mask_sigma: Literal["shared", "expert"] = Field(
        "shared",
        description="shared: mask losses on the flow loss's own samples (those at σ ≤ mask_max_sigma); expert: a "
        "second forward of the same images and noise at σ drawn around the expert's σ (the one the readout uses), "
        "logit-normal with std mask_sigma_std, while the flow loss keeps its full σ distribution",
    )
    mask_sigma_std: float = Field(0.3, gt=0, description="mask_sigma 'expert': std of logit(σ) around logit(expert σ)")
    checkpoint_every: int = Field(100, ge=1)
    validate_every: int = Field(100, ge=1)
    validation_samples: int = Field(100, ge=1)
    max_flow_increase: float | None = Field(
        0.02,
        ge=0,
        description=(
            "the best checkpoint is the highest val mIoU among those whose val flow loss is within this fraction of "
            "the "
            "base model's (None: mIoU alone)"
        ),
    )
    seed: int = 0
    work_dir: str = "models/finetune"
    output: str = "models/lora"

    @model_validator(mode="after")
    def _predictor_loss_needs_classes(self) -> FinetuneParams:
        if self.mask_loss == "predictor" and self.mode != "gt_classes":
            raise ValueError("mask_loss 'predictor' supervises the GT-class predictor: it needs mode 'gt_classes'")
        return self


class EvaluateParams(Group):
    split: str = "test"
    batch_size: int = Field(16, ge=1)
    max_samples: int | None = Field(None, ge=1)
    kl_thresholds: list[float] = Field(
        [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.2],
        min_length=1,
        description=(
            "unsupervised: candidate thresholds of the anchor grouping (symmetric KL), the best chosen on val_split"
        ),
    )
    predictors: list[Literal["probability", "logit"]] = Field(
        ["probability", "logit"],
        min_length=1,
        description=(
            "GT-class protocol: how the expert layer's maps become a prediction, the best chosen on val_split for each "
            "model "
            "(probability: head-mean softmax, as the paper; logit: head-mean logits, sigmoid > ½, what MAGNET's losses "
            "train)"
        ),
    )
    background_thresholds: list[float] | None = Field(
        [0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5],
        description=(
            "GT-class protocol with prompt.background 'threshold': candidate background thresholds of the probability "
            "predictor, the best (predictor, threshold) chosen on val_split for each model (None or []: "
            "prompt.background_threshold only)"
        ),
    )
    val_split: str = Field(
        "val",
        description="split the unsupervised threshold and the GT-class reading are chosen on (never the evaluated one)",
    )
    val_samples: int = Field(100, ge=1, description="samples of val_split used to choose them")
    bootstrap_resamples: int = Field(1000, ge=100, description="paired bootstrap over test images for every interval")
    seed: int = 0
    gallery: int = Field(6, ge=0, description="samples in the overlay gallery")
    generation_samples: int = Field(32, ge=0, description="test captions generated for the fidelity checks")
    generation_steps: int = Field(30, ge=1)
    guidance: float = 4.0
    clip_model: str | None = Field(None, description="directory of a transformers CLIP model: adds the CLIP score")
    output: str = "metrics/evaluate.json"

    @field_validator("background_thresholds")
    @classmethod
    def _background_thresholds_in_range(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and not all(0 <= t <= 1 for t in value):
            raise ValueError(f"every background threshold must lie in [0, 1] (a fraction of the peak), got {value}")
        return value


class OrchestrationParams(Group):
    dask_address: str | None = Field(None, description="scheduler of an existing Dask cluster (None: a local cluster)")
    local_workers: int = Field(
        2, ge=0, description="workers of the local Dask cluster (0: shards run in this process, one after another)"
    )
    gpus_per_task: int = Field(
        1, ge=0, description="GPU resources an extraction/evaluation shard requests from a worker"
    )


class TrackingParams(Group):
    mlflow_db: str = Field("mlflow.db", description="SQLite file of the MLflow tracking store, relative to the repo")
    experiment: str = "seg4diff"


class Params(Group):
    model: ModelParams
    data: DataParams
    tracking: TrackingParams
    orchestration: OrchestrationParams = OrchestrationParams()
    prepare: PrepareParams
    prompt: PromptParams = PromptParams()
    pretrain: PretrainParams = PretrainParams()
    extract: ExtractParams = ExtractParams()
    score: ScoreParams = ScoreParams()
    select: SelectParams = SelectParams()
    causal: CausalParams = CausalParams()
    explore: ExploreParams = ExploreParams()
    finetune: FinetuneParams = FinetuneParams()
    evaluate: EvaluateParams = EvaluateParams()
    readouts: ReadoutsParams = ReadoutsParams()
