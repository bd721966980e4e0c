"""Tasks of the pretrain stage: train the Shapes organism, then check that it reads its captions and draws them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from mlflow.tracking import MlflowClient
from prefect import task

from seg4diff.config import Params
from seg4diff.data.prepared import class_names, prepared_split
from seg4diff.organism.pipeline import Architecture, OrganismPipeline
from seg4diff.organism.sampling import sample
from seg4diff.organism.shape_reader import prompt_reading
from seg4diff.ownership import remove_ours
from seg4diff.training.pretrain import flow_matching_loss, train


def load_split(params: Params, split: str) -> tuple[torch.Tensor, list[str], list[str]]:
    """Returns (images (n, 3, H, W) in [−1, 1], captions, class names) of a prepared split."""
    store = prepared_split(params, split)
    images = torch.from_numpy(store["image"].values).permute(0, 3, 1, 2).float() / 127.5 - 1
    return images, [str(c) for c in store["caption"].values], class_names(store)


@task(name="train-organism")
def train_organism_task(params: Params, run_id: str) -> dict:
    """Trains the organism on the train split (checkpointed in pretrain.work_dir, resuming a run of the same settings
    there), saves it to pretrain.output; returns the loss log."""
    p = params.pretrain
    images, captions, names = load_split(params, "train")
    words = sorted({word for text in [*names, *captions] for word in text.split()})
    pipe = OrganismPipeline.build(words, Architecture.from_params(p.architecture, params.prepare.resolution), p.seed)
    client = MlflowClient()
    log = train(
        pipe,
        images,
        captions,
        p,
        on_log=lambda step, loss: client.log_metric(run_id, "train_loss", loss, step=step),
        work_dir=p.work_dir,
        data_digest=prepared_split(params, "train").attrs["digest"],
    )
    pipe.save_pretrained(p.output)
    remove_ours(Path(p.work_dir), "pretrain.work_dir")  # finished: a later run must train anew, never reuse old weights
    return {"steps": log.steps, "losses": log.losses, "seconds": log.seconds}


@task(name="check-organism")
def check_organism_task(params: Params) -> dict:
    """Returns held-out checks: caption reading (loss with true vs another image's caption) and what generated images
    keep of their captions (shape, colour and object recall beside chance; colour agreement)."""
    p = params.pretrain
    pipe = OrganismPipeline.from_pretrained(p.output)
    images, captions, _ = load_split(params, "val")
    generator = torch.Generator().manual_seed(p.seed + 1)
    noise = torch.randn(images.shape, generator=generator)
    s = torch.full((len(images),), 0.9)
    with torch.no_grad():
        true = flow_matching_loss(pipe, images, captions, s, noise).item()
        other = flow_matching_loss(pipe, images, captions[1:] + captions[:1], s, noise).item()
        empty = flow_matching_loss(pipe, images, [""] * len(images), s, noise).item()
    chosen = captions[: p.num_samples]
    generated = sample(pipe, chosen, steps=p.sample_steps, guidance=p.guidance, seed=p.seed).permute(0, 2, 3, 1).numpy()
    return {
        "loss_true_caption": true,
        "loss_other_caption": other,
        "loss_empty_caption": empty,
        "caption_gain": 1 - true / other,
        **prompt_reading(generated, chosen, params.data.shapes.design),
        "samples": generated.astype(np.float32),
        "captions": chosen,
    }
