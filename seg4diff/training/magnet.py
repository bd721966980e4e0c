"""MAGNET: LoRA on a frozen MM-DiT, trained with flow matching plus focal + dice losses on the expert layer's
pre-softmax image→text logits (the paper's), or the cross-entropy of the zero-shot predictor's own decision on its
head-mean probabilities (`mask_loss: predictor`). Checkpoints carry optimizer and RNG state, so a restarted run resumes
exactly (seg4diff.training.checkpoints: no pickles; a work folder or output seg4diff did not write is refused)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from tqdm import tqdm

from seg4diff.backbones.backbone import Backbone, pixels_of
from seg4diff.backbones.lora import LoraSpec, add_lora, save_lora, set_lora_state
from seg4diff.backbones.noise import logit_normal
from seg4diff.capture.attention import capture_attention
from seg4diff.config import FinetuneParams, PromptParams
from seg4diff.data.prepared import class_names, native_label
from seg4diff.data.sample import IGNORE_INDEX
from seg4diff.evaluation.flow_loss import heldout_flow_loss
from seg4diff.evaluation.metrics import summarize
from seg4diff.ownership import check_replaceable, mark, remove_ours
from seg4diff.prompts import PromptStyle, build_prompt, prompt_style, token_slots
from seg4diff.segmentation.zero_shot import Readout, segmentation_confusion
from seg4diff.training.checkpoints import (
    FINETUNE,
    claim_work_dir,
    latest_checkpoint,
    load_checkpoint,
    resume_state,
    save_checkpoint,
)
from seg4diff.training.losses import dice_loss, hungarian_match, predictor_loss, sigmoid_focal_loss
from seg4diff.training.optim import adamw_warmup_cosine


@dataclass(frozen=True)
class MagnetConfig:
    """Everything a MAGNET run depends on; built from the params groups by `from_params` (their fields are the
    defaults)."""

    expert_layer: int
    expert_sigma: float
    base_model: str  # digest of the base model's weights (backbones.backbone.model_digest): an adapter fits it only
    finetune: FinetuneParams
    prompt: PromptParams

    @classmethod
    def from_params(
        cls, finetune: FinetuneParams, prompt: PromptParams, expert_layer: int, expert_sigma: float, base_model: str
    ) -> MagnetConfig:
        return cls(int(expert_layer), float(expert_sigma), base_model, finetune, prompt)

    @property
    def style(self) -> PromptStyle:
        return prompt_style(self.prompt, "caption" if self.finetune.mode == "caption" else "gt_classes")

    @property
    def threshold(self) -> float | None:
        return self.prompt.threshold

    @property
    def readout(self) -> Readout:
        """The zero-shot readout validation scores: the expert layer and σ, prompts built as the training ones."""
        return Readout(self.expert_layer, self.expert_sigma, self.finetune.seed, self.style, self.threshold)

    def as_dict(self) -> dict:
        return {
            "expert_layer": self.expert_layer,
            "expert_sigma": self.expert_sigma,
            "base_model": self.base_model,
            "finetune": self.finetune.model_dump(exclude={"work_dir", "output"}),
            "prompt": self.prompt.model_dump(),
        }

    @property
    def lora(self) -> LoraSpec:
        return LoraSpec(
            self.finetune.rank, self.finetune.alpha, self.finetune.dropout, tuple(self.finetune.target_modules)
        )

    def save(self, transformer: torch.nn.Module, directory: Path) -> None:
        save_lora(
            transformer,
            directory,
            self.lora,
            {"expert_layer": self.expert_layer, "expert_sigma": self.expert_sigma, "base_model": self.base_model},
        )


def sample_sigmas(generator: torch.Generator, n: int, config: MagnetConfig) -> torch.Tensor:
    """Returns logit-normal noise levels on the shifted schedule σ = shift·u / (1 + (shift − 1)·u)."""
    u = logit_normal(generator, n, config.finetune.sigma_logit_mean, config.finetune.sigma_logit_std)
    return config.finetune.sigma_shift * u / (1 + (config.finetune.sigma_shift - 1) * u)


def mask_sigmas(generator: torch.Generator, n: int, config: MagnetConfig) -> torch.Tensor:
    """Returns the noise levels of the mask losses' forward (finetune.mask_sigma 'expert'): logit-normal around the
    expert's σ, so that supervision lands where the readout reads."""
    centre = torch.logit(torch.tensor(config.expert_sigma, dtype=torch.float64))
    return torch.sigmoid(
        centre + config.finetune.mask_sigma_std * torch.randn(n, generator=generator, dtype=torch.float64)
    )


def _class_maps(maps: torch.Tensor, slot_class: np.ndarray, classes: np.ndarray) -> torch.Tensor:
    """(token, y, x) head-mean maps → (class, y, x): each class's token maps averaged."""
    return torch.stack([maps[torch.from_numpy(np.flatnonzero(slot_class == c))].mean(0) for c in classes])


def magnet_loss(
    backbone: Backbone, rows: xr.Dataset, config: MagnetConfig, generator: torch.Generator
) -> tuple[torch.Tensor, dict]:
    """Returns (weighted loss, parts) for one micro-batch of prepared samples: flow + focal + dice at the expert
    layer."""
    names = class_names(rows)
    mode = config.style.mode
    built = [
        build_prompt(config.style, rows["present"].values[k], names, str(rows["caption"].values[k]))
        for k in range(rows.sizes["sample"])
    ]
    with torch.no_grad():
        encoding = backbone.encode_prompts([prompt for prompt, _ in built])
        images = pixels_of(rows["image"].values)
        x0 = backbone.encode_images(images)
    width = len(encoding.tokens[0])
    keep = "class" if mode == "gt_classes" else "all"
    slots = [
        token_slots(encoding, k, spans, keep, width, str(k), config.style.columns) for k, (_, spans) in enumerate(built)
    ]
    used = max(int((s.position >= 0).sum()) for s in slots)
    positions = torch.from_numpy(np.stack([s.position[:used] for s in slots]).astype(np.int64)).clamp_min(0)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    sigma = sample_sigmas(generator, x0.shape[0], config).to(x0)
    noised = lambda s: s.view(-1, 1, 1, 1) * noise + (1 - s.view(-1, 1, 1, 1)) * x0  # noqa: E731
    on_predictor = config.finetune.mask_loss == "predictor"
    capture = lambda: capture_attention(  # noqa: E731
        backbone.transformer,
        [config.expert_layer],
        ("image_to_text",),
        positions,
        head_mean=mode == "gt_classes" and not on_predictor,
        output="logits",
        detach=False,
    )
    if config.finetune.mask_sigma == "expert":  # the flow loss on its own σ; the mask losses at the readout's σ
        flow = F.mse_loss(backbone.velocity(noised(sigma), sigma, encoding).float(), (noise - x0).float())
        sigma = mask_sigmas(generator, x0.shape[0], config).to(x0)
        with capture() as cap:
            backbone.velocity(noised(sigma), sigma, encoding)
    else:
        with capture() as cap:
            prediction = backbone.velocity(noised(sigma), sigma, encoding)
        flow = F.mse_loss(prediction.float(), (noise - x0).float())
    scores = cap.tensor("image_to_text")[:, 0]  # (batch, head, image_token, slot): logits
    if on_predictor:  # the predictor's head-mean probabilities: exp(logit − log-sum-exp over all keys), per head
        scores = torch.exp(scores.float() - cap.tensor("image_lse")[:, 0, ..., None].float()).mean(1, keepdim=True)
    grid = backbone.token_grid(*images.shape[2:])
    labels = [torch.from_numpy(native_label(rows, k).astype(np.int64)) for k in range(len(slots))]
    maps, targets, valid, predictor_terms = [], [], [], []
    for k, slot in enumerate(slots):
        shared = config.finetune.mask_sigma == "shared"
        if shared and config.finetune.mask_max_sigma is not None and sigma[k].item() > config.finetune.mask_max_sigma:
            continue
        slot_class = slot.class_id[:used]
        slot_class = np.where(slot.position[:used] >= 0, slot_class, -1)
        sample_scores = scores[k].transpose(-1, -2).reshape(scores.shape[1], used, *grid)  # (head, slot, y, x)
        size = labels[k].shape  # the sample's own label size
        up = lambda x: F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]  # noqa: E731
        if mode == "gt_classes":
            classes = np.unique(slot_class[slot_class >= 0])
            sample_maps = up(_class_maps(sample_scores[0], slot_class, classes))
            if on_predictor:
                predictor_terms.append(predictor_loss(sample_maps, labels[k], classes, config.threshold))
                continue
            sample_targets = torch.stack([(labels[k] == c).float() for c in classes])
        else:  # every head × token map is a candidate, Hungarian-matched to the present classes' masks
            present = [
                c
                for c in np.flatnonzero(rows["present"].values[k])
                if (labels[k] == c).float().mean() >= config.finetune.min_mask_fraction
            ]
            if not present:
                continue
            candidates = up(sample_scores[:, slot.position[:used] >= 0].flatten(0, 1))
            masks = torch.stack([(labels[k] == c).float() for c in present])
            chosen, matched = hungarian_match(candidates, masks)
            sample_maps, sample_targets = candidates[chosen], masks[matched]
        maps.append(sample_maps)
        targets.append(sample_targets)
        valid.append((labels[k] != IGNORE_INDEX).float().expand_as(sample_targets))
    if maps:  # native label sizes differ: pad to the largest, padding invalid (no loss there)
        height, width = max(m.shape[-2] for m in maps), max(m.shape[-1] for m in maps)
        pad = lambda x: F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2]))  # noqa: E731
        maps, targets, valid = (torch.cat([pad(x) for x in group]) for group in (maps, targets, valid))
        focal = sigmoid_focal_loss(
            maps.float(), targets, config.finetune.focal_alpha, config.finetune.focal_gamma, valid
        )
        dice = dice_loss(maps.float(), targets, valid)
    else:
        focal = dice = torch.zeros((), device=flow.device)
    on_prediction = torch.stack(predictor_terms).mean() if predictor_terms else torch.zeros((), device=flow.device)
    loss = (
        config.finetune.lambda_flow * flow
        + config.finetune.lambda_focal * focal
        + config.finetune.lambda_dice * dice
        + config.finetune.lambda_predictor * on_prediction
    )
    return loss, {
        "flow": flow.item(),
        "focal": focal.item(),
        "dice": dice.item(),
        "predictor": on_prediction.item(),
        "loss": loss.item(),
    }


def validate(backbone: Backbone, val: xr.Dataset, config: MagnetConfig) -> dict:
    """Returns expert-layer mIoU and held-out flow loss on the validation split."""
    confusion = segmentation_confusion(backbone, val, config.readout, 16, limit=config.finetune.validation_samples)
    return {
        "val_miou": summarize(confusion)["miou"],
        "val_flow_loss": heldout_flow_loss(
            backbone, val, config.finetune.seed, config.finetune.validation_samples, style=config.style
        ),
    }


def _save_checkpoint(
    directory: Path, step: int, transformer, optimizer, scheduler, generator, config, history, best
) -> None:
    """Writes checkpoint-<step>: the adapter and what resumes the run exactly (checkpoints.save_checkpoint)."""
    state = {
        **resume_state(step, optimizer, scheduler, generator),
        "history": history,
        "best": best,
    }
    save_checkpoint(directory, state, lambda folder: config.save(transformer, folder))


def _save_best(transformer: torch.nn.Module, config: MagnetConfig, work_dir: Path) -> None:
    """Writes the adapter to work_dir/best, refusing (ConfigError) a `best` folder seg4diff did not write."""
    best = work_dir / "best"
    check_replaceable(best, "finetune.work_dir")
    mark(best, "MAGNET adapter")
    config.save(transformer, best)


def publish_adapter(best: Path, output: Path) -> None:
    """Replaces `output` (finetune.output) with a copy of the adapter in `best`; a folder seg4diff did not write is
    refused (ConfigError naming finetune.output), never deleted."""
    remove_ours(output, "finetune.output")
    shutil.copytree(best, output)
    mark(output, "MAGNET adapter")


def train_magnet(
    backbone: Backbone,
    train: xr.Dataset,
    val: xr.Dataset,
    config: MagnetConfig,
    work_dir: Path,
    on_metrics: Callable[[int, dict], None] | None = None,
    progress: bool = True,
) -> dict:
    """Returns the best validation numbers, the history and the seconds spent training the adapter (resuming from
    work_dir's latest checkpoint); the best-on-validation adapter goes to work_dir/best. A work_dir seg4diff did not
    write is refused (ConfigError); the run of other settings there is moved aside, not deleted."""
    work_dir = Path(work_dir)
    # one line before any training: whether a run is resumed, or one of other settings was moved aside
    print(claim_work_dir(work_dir, json.dumps(config.as_dict(), sort_keys=True), FINETUNE))
    torch.manual_seed(config.finetune.seed)
    parameters = add_lora(backbone.transformer, config.lora)
    optimizer, scheduler = adamw_warmup_cosine(
        parameters,
        config.finetune.lr,
        config.finetune.weight_decay,
        config.finetune.warmup_steps,
        config.finetune.steps,
    )
    generator = torch.Generator().manual_seed(config.finetune.seed)
    step, history, best = 0, [], {"val_miou": -1.0, "val_flow_loss": float("nan"), "step": 0}
    checkpoint = latest_checkpoint(work_dir)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        set_lora_state(backbone.transformer, state["adapter"], str(checkpoint))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        step, history, best = state["step"], state["history"], state["best"]
    if step == 0:  # the base model's numbers, for comparison (LoRA B starts at zero: the adapter is a no-op)
        backbone.transformer.eval()
        history.append({"step": 0, **validate(backbone, val, config)})
        best = {"val_miou": history[0]["val_miou"], "val_flow_loss": history[0]["val_flow_loss"], "step": 0}
        _save_best(backbone.transformer, config, work_dir)  # until a step beats the base model, the no-op adapter
        if on_metrics:
            on_metrics(0, history[-1])
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if backbone.device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    n = train.sizes["sample"]
    started = time.perf_counter()
    bar = tqdm(total=config.finetune.steps, initial=step, desc="finetune", unit="step", disable=not progress)
    while step < config.finetune.steps:
        backbone.transformer.train()
        parts = []
        for _ in range(
            config.finetune.grad_accumulation
        ):  # gradients of all micro-batches add up before one optimizer step
            indices = torch.randint(n, (config.finetune.batch_size,), generator=generator).tolist()
            with autocast:
                loss, part = magnet_loss(backbone, train.isel(sample=indices).load(), config, generator)
            (loss / config.finetune.grad_accumulation).backward()
            parts.append(part)
        torch.nn.utils.clip_grad_norm_(parameters, config.finetune.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        metrics = {f"train_{k}": float(np.mean([p[k] for p in parts])) for k in parts[0]}
        if step % config.finetune.validate_every == 0 or step == config.finetune.steps:
            backbone.transformer.eval()
            metrics |= validate(backbone, val, config)
            base_flow = history[0]["val_flow_loss"]
            keeps_generation = (
                config.finetune.max_flow_increase is None
                or metrics["val_flow_loss"] <= (1 + config.finetune.max_flow_increase) * base_flow
            )
            if keeps_generation and metrics["val_miou"] > best["val_miou"]:
                best = {"val_miou": metrics["val_miou"], "val_flow_loss": metrics["val_flow_loss"], "step": step}
                _save_best(backbone.transformer, config, work_dir)
        history.append({"step": step, **metrics})
        if on_metrics:
            on_metrics(step, metrics)
        if step % config.finetune.checkpoint_every == 0 or step == config.finetune.steps:
            _save_checkpoint(
                work_dir, step, backbone.transformer, optimizer, scheduler, generator, config, history, best
            )
    bar.close()
    backbone.transformer.eval()
    checked = min(val.sizes["sample"], config.finetune.validation_samples)
    return {"best": best, "history": history, "seconds": time.perf_counter() - started, "validation_images": checked}
