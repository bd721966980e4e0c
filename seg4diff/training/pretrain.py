"""Training the Shapes organism from scratch with SD3's rectified-flow objective.

Given a work folder (pretrain.work_dir), training writes a checkpoint every `checkpoint_every` steps and at the end —
the organism as save_pretrained writes it (safetensors), plus the optimizer, schedule, RNG states and loss log
(seg4diff.training.checkpoints: no pickles) — and resumes from the newest one of the same settings, ending
bit-identical to an uninterrupted run: every random draw comes from the seeded generator, whose state is saved.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm import tqdm
from transformers.utils import SAFE_WEIGHTS_NAME

from seg4diff.backbones.noise import logit_normal
from seg4diff.config import PretrainParams
from seg4diff.errors import DataError
from seg4diff.organism.pipeline import OrganismPipeline
from seg4diff.training.checkpoints import (
    PRETRAIN,
    claim_work_dir,
    latest_checkpoint,
    load_state,
    resume_state,
    save_checkpoint,
)
from seg4diff.training.optim import adamw_warmup_cosine

# pretrain settings that do not change the trained weights: where things go, how often the run logs or checkpoints,
# and the checks after training
NOT_TRAINING = {"output", "work_dir", "checkpoint_every", "log_every", "num_samples", "sample_steps", "guidance"}
# where save_pretrained puts each module's weights in a checkpoint (the organism's layout: organism/pipeline.py)
WEIGHT_FILES = (f"transformer/{SAFETENSORS_WEIGHTS_NAME}", f"text_encoder/{SAFE_WEIGHTS_NAME}")


def flow_matching_loss(
    pipe: OrganismPipeline,
    x0: torch.Tensor,
    captions: list[str],
    s: torch.Tensor,
    noise: torch.Tensor,
    reduce: bool = True,
) -> torch.Tensor:
    """Returns the rectified-flow MSE: x_s = (1−s)·x0 + s·ε, target ε − x0, timestep s·1000 (per sample if not
    reduce)."""
    s4 = s.view(-1, 1, 1, 1)
    noisy = (1 - s4) * x0 + s4 * noise
    embeds, pooled = pipe.encode_prompt(captions)
    prediction = pipe.transformer(
        hidden_states=noisy,
        encoder_hidden_states=embeds,
        pooled_projections=pooled,
        timestep=s * 1000,
        return_dict=False,
    )[0]
    error = (prediction.float() - (noise - x0).float()).pow(2).mean(dim=(1, 2, 3))
    return error.mean() if reduce else error


@dataclass
class TrainingLog:
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0  # of training, summed over the sessions of a resumed run


def training_settings(schedule: PretrainParams, data_digest: str, vocabulary: list[str]) -> str:
    """Returns, as JSON text, what decides a training's result: the pretrain settings (not NOT_TRAINING), the training
    data's content digest and the vocabulary."""
    return json.dumps(
        {
            "pretrain": schedule.model_dump(mode="json", exclude=NOT_TRAINING),
            "data": data_digest,
            "vocabulary": vocabulary,
        },
        sort_keys=True,
    )


def train(
    pipe: OrganismPipeline,
    images: torch.Tensor,
    captions: list[str],
    schedule: PretrainParams,
    on_log: Callable[[int, float], None] | None = None,
    progress: bool = True,
    work_dir: str | Path | None = None,
    data_digest: str | None = None,
) -> TrainingLog:
    """Returns the loss log of training transformer and text encoder in place on images (n, 3, H, W) in [−1, 1] with
    the steps, batch size, optimiser settings, caption dropout and seed of `schedule`, the mean loss logged every
    `schedule.log_every` steps (on_log(step, loss) at each log point, those restored from a checkpoint first).

    With `work_dir`, checkpoints go there and a run of the same settings there is resumed; `data_digest` (the train
    split's content digest) is then required. A work_dir seg4diff did not write is refused (ConfigError naming
    pretrain.work_dir), a run of other settings there moved aside, not deleted."""
    if work_dir is not None and not data_digest:
        raise ValueError("train: a work_dir needs the training data's digest (data_digest) to recognise its run")
    torch.manual_seed(schedule.seed)
    generator = torch.Generator().manual_seed(schedule.seed)
    parameters = [p for module in pipe.modules for p in module.parameters()]
    optimizer, scheduler = adamw_warmup_cosine(
        parameters, schedule.lr, schedule.weight_decay, schedule.warmup_steps, schedule.steps
    )
    log, running, first = TrainingLog(), [], 0
    if work_dir is not None:
        work_dir = Path(work_dir)
        vocab = pipe.tokenizer.get_vocab()
        settings = training_settings(schedule, data_digest, sorted(vocab, key=vocab.get))
        # one line before any training: whether a run is resumed, or one of other settings was moved aside
        print(claim_work_dir(work_dir, settings, PRETRAIN))
        checkpoint = latest_checkpoint(work_dir)
        if checkpoint is not None:
            state = _resume(checkpoint, pipe, optimizer, scheduler, generator)
            first, running = state["step"], state["running"]
            log = TrainingLog(**state["log"])
    if on_log:
        for logged, loss in zip(log.steps, log.losses):
            on_log(logged, loss)
    for module in pipe.modules:
        module.train()
    earlier, start = log.seconds, time.perf_counter()
    bar = tqdm(
        range(first, schedule.steps),
        initial=first,
        total=schedule.steps,
        desc="pretrain",
        unit="step",
        disable=not progress,
    )
    for step in bar:
        index = torch.randint(len(images), (schedule.batch_size,), generator=generator)
        dropped = torch.rand(schedule.batch_size, generator=generator) < schedule.caption_dropout
        batch_captions = ["" if drop else captions[i] for i, drop in zip(index.tolist(), dropped.tolist())]
        s = logit_normal(generator, schedule.batch_size)
        noise = torch.randn(images[index].shape, generator=generator)
        loss = flow_matching_loss(pipe, images[index], batch_captions, s, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, schedule.grad_clip)
        optimizer.step()
        scheduler.step()
        running.append(loss.item())
        if (step + 1) % schedule.log_every == 0 or step + 1 == schedule.steps:
            mean = float(np.mean(running))
            running = []
            log.steps.append(step + 1)
            log.losses.append(mean)
            bar.set_postfix(loss=f"{mean:.4f}")
            if on_log:
                on_log(step + 1, mean)
        log.seconds = earlier + time.perf_counter() - start
        if work_dir is not None and ((step + 1) % schedule.checkpoint_every == 0 or step + 1 == schedule.steps):
            _save(work_dir, step + 1, pipe, optimizer, scheduler, generator, log, running)
    for module in pipe.modules:
        module.eval()
    return log


def _save(work_dir: Path, step: int, pipe, optimizer, scheduler, generator, log: TrainingLog, running: list) -> None:
    """Writes checkpoint-<step>: the organism and what resumes the run exactly (checkpoints.save_checkpoint)."""
    state = {
        **resume_state(step, optimizer, scheduler, generator),
        "log": {"steps": log.steps, "losses": log.losses, "seconds": log.seconds},
        "running": running,  # the losses since the last log point: a checkpoint need not fall on one
    }
    save_checkpoint(work_dir, state, pipe.save_pretrained, PRETRAIN)


def _resume(checkpoint: Path, pipe: OrganismPipeline, optimizer, scheduler, generator: torch.Generator) -> dict:
    """Returns the state of `checkpoint` (load_state) after loading its weights, optimizer, schedule and RNG states
    into the run; raises DataError, in one line naming the file, when they do not load."""
    state = load_state(checkpoint, PRETRAIN)
    for module, name in zip(pipe.modules, WEIGHT_FILES):
        try:
            module.load_state_dict(load_file(checkpoint / name))
        except (OSError, RuntimeError, SafetensorError) as error:
            message = " ".join(f"{type(error).__name__}: {error}".split())[:300]
            raise DataError(
                f"{checkpoint / name}: unreadable organism weights ({message}): delete {checkpoint.parent} to start "
                "this pretraining over"
            ) from None
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return state
