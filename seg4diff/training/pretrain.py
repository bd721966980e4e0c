"""Training the Shapes organism from scratch with SD3's rectified-flow objective, and sampling from it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from seg4diff.backbones.noise import logit_normal
from seg4diff.config import PretrainParams
from seg4diff.organism.pipeline import OrganismPipeline
from seg4diff.training.optim import adamw_warmup_cosine


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
    seconds: float = 0.0


def train(
    pipe: OrganismPipeline,
    images: torch.Tensor,
    captions: list[str],
    schedule: PretrainParams,
    on_log: Callable[[int, float], None] | None = None,
    progress: bool = True,
) -> TrainingLog:
    """Trains transformer and text encoder in place on images (n, 3, H, W) in [−1, 1] with the steps, batch size,
    optimiser settings, caption dropout and seed of `schedule`, logging the mean loss every `schedule.log_every`
    steps; returns the loss log."""
    torch.manual_seed(schedule.seed)
    generator = torch.Generator().manual_seed(schedule.seed)
    parameters = [p for module in pipe.modules for p in module.parameters()]
    optimizer, scheduler = adamw_warmup_cosine(
        parameters, schedule.lr, schedule.weight_decay, schedule.warmup_steps, schedule.steps
    )
    for module in pipe.modules:
        module.train()
    log, running, start = TrainingLog(), [], time.perf_counter()
    bar = tqdm(range(schedule.steps), desc="pretrain", unit="step", disable=not progress)
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
    for module in pipe.modules:
        module.eval()
    log.seconds = time.perf_counter() - start
    return log
