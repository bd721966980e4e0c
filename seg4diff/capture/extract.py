"""Attention extraction: prompts from class names, seeded noise at chosen sigmas, one forward each, into the store."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from seg4diff.backbones.backbone import Backbone, PromptEncoding, pixels_of
from seg4diff.backbones.noise import sample_noise
from seg4diff.capture.attention import capture_attention
from seg4diff.config import ExtractParams
from seg4diff.data.attention_store import (
    ATTENTION,
    IMAGE_DIAGNOSTICS,
    TEXT_DIAGNOSTICS,
    SampleRecord,
    StoreLayout,
    completed,
    create_store,
    kept_path,
    store_fingerprint,
    write_samples,
)
from seg4diff.data.prepared import class_names
from seg4diff.errors import ConfigError, DataError, ResourceError
from seg4diff.ownership import check_replaceable
from seg4diff.prompts import PromptStyle, TokenSlots, build_prompt, token_slots


def resolve_sigmas(backbone: Backbone, params: ExtractParams, image_tokens: int) -> list[float]:
    """Returns the noise levels to extract at: params.sigmas, or the scheduler's sigma `k` steps from the end of a
    num_inference_steps schedule for each k of params.steps_from_end (the authors' `timesteps[-k]`)."""
    if params.sigmas is not None:
        return [float(s) for s in params.sigmas]
    schedule = backbone.sigmas(params.num_inference_steps, image_tokens)
    bad = [k for k in params.steps_from_end if not 1 <= k <= len(schedule)]
    if bad:
        raise ConfigError(
            f"extract.steps_from_end {bad} outside a {params.num_inference_steps}-step schedule (1…{len(schedule)})"
        )
    return [round(float(schedule[len(schedule) - k]), 6) for k in params.steps_from_end]


@torch.no_grad()
def extract_batch(
    backbone: Backbone,
    images: np.ndarray,
    encoding: PromptEncoding,
    slots: list[TokenSlots],
    sample_indices: list[int],
    sigmas: list[float],
    params: ExtractParams,
    layers: list[int],
) -> dict[str, np.ndarray]:
    """Returns {direction: (batch, layer, head, timestep, token, y, x)} attention for a batch of uint8 images (b, H, W,
    3)."""
    pixels = pixels_of(images)
    grid = backbone.token_grid(*images.shape[1:3])
    latents = backbone.encode_images(pixels)
    positions = torch.from_numpy(np.stack([s.position for s in slots]).astype(np.int64))
    empty = positions < 0
    noise = torch.stack([sample_noise(latents.shape[1:], params.seed, i) for i in sample_indices]).to(latents)
    names = list(params.directions) + (list(IMAGE_DIAGNOSTICS + TEXT_DIAGNOSTICS) if params.diagnostics else [])
    per_sigma = {name: [] for name in names}
    for sigma in sigmas:
        noisy = sigma * noise + (1 - sigma) * latents
        with capture_attention(
            backbone.transformer,
            layers,
            params.directions,
            positions.clamp_min(0),
            params.head_mean,
            diagnostics=params.diagnostics,
        ) as cap:
            backbone.transformer(**backbone.transformer_inputs(noisy, sigma, encoding))
        for name in names:
            values = cap.tensor(name).float()
            if name == "image_to_text":  # (b, layer, head, image, token) → (b, layer, head, token, y, x)
                values = values.transpose(-1, -2)
            if name in ATTENTION:
                values = values.reshape(*values.shape[:4], *grid).masked_fill(empty[:, None, None, :, None, None], 0)
            elif name in IMAGE_DIAGNOSTICS:
                values = values.reshape(*values.shape[:3], *grid)
            else:
                values = values.masked_fill(empty[:, None, None, :], 0)
            per_sigma[name].append(values.cpu().numpy())
    return {name: np.stack(v, axis=3) for name, v in per_sigma.items()}


def plan_ranges(samples: int, batch_size: int, workers: int) -> list[tuple[int, int]]:
    """Returns contiguous, batch-aligned sample ranges, one per worker: the batches are the same for any worker
    count."""
    batches = [(start, min(start + batch_size, samples)) for start in range(0, samples, batch_size)]
    if not batches:
        return []
    per_worker = int(np.ceil(len(batches) / workers))
    return [
        (group[0][0], group[-1][1])
        for group in (batches[i : i + per_worker] for i in range(0, len(batches), per_worker))
    ]


def fingerprint(*groups: dict) -> str:
    """Returns a short hash of the settings that determine the store's content."""
    return hashlib.sha256(json.dumps(groups, sort_keys=True, default=str).encode()).hexdigest()[:16]


def open_or_create(path: Path, layout: StoreLayout, attrs: dict) -> str:
    """Opens the store at `path` to resume it when its fingerprint is attrs["fingerprint"], else creates it; returns
    one line saying what happened.

    Nothing a user owns or paid for is deleted: a folder seg4diff did not write is refused (ConfigError naming
    extract.output); a store of other settings is kept beside it (`<path>.kept-<its fingerprint>`), and one kept
    earlier for these settings is moved back and resumed instead of recomputed."""
    path = Path(path)
    wanted = attrs["fingerprint"]
    if store_fingerprint(path) == wanted:
        return f"resuming the attention store {path} (same settings)"
    said = []
    if path.exists():
        check_replaceable(path, "extract.output")
        previous = store_fingerprint(path)
        if previous is not None:
            kept = kept_path(path, previous)
            shutil.rmtree(kept, ignore_errors=True)  # an older copy of the same settings: this one supersedes it
            path.rename(kept)
            said.append(
                f"the store of other settings (fingerprint {previous}) was kept at {kept} (delete it to free disk)"
            )
        else:
            shutil.rmtree(path)  # an empty folder, or one seg4diff wrote without a store in it
    earlier = kept_path(path, wanted)
    if store_fingerprint(earlier) == wanted:
        earlier.rename(path)
        return "; ".join([*said, f"resuming the store kept earlier for these settings ({earlier} → {path})"])
    create_store(path, layout, attrs)
    return "; ".join([*said, f"created the attention store {path}"])


def _compute(
    backbone: Backbone,
    rows: xr.Dataset,
    indices: list[int],
    names: list[str],
    sigmas: list[float],
    layers: list[int],
    params: ExtractParams,
    style: PromptStyle,
) -> list[SampleRecord]:
    """Returns the records of one loaded batch: prompts, token slots, and attention at every sigma."""
    built = [
        build_prompt(style, rows["present"].values[k], names, str(rows["caption"].values[k]))
        for k in range(len(indices))
    ]
    prompts = [prompt for prompt, _ in built]
    encoding = backbone.encode_prompts(prompts)
    slots = [
        token_slots(encoding, k, spans, params.tokens, params.max_tokens, f"{params.split}/{indices[k]}", style.columns)
        for k, (_, spans) in enumerate(built)
    ]
    attention = extract_batch(backbone, rows["image"].values, encoding, slots, indices, sigmas, params, layers)
    records = []
    for run_start, run_stop in _runs(indices):  # consecutive runs map to one region write each
        part = slice(indices.index(run_start), indices.index(run_stop - 1) + 1)
        records.append(
            SampleRecord(
                start=run_start,
                attention={d: a[part] for d, a in attention.items()},
                token_position=np.stack([s.position for s in slots[part]]),
                token_class=np.stack([s.class_id for s in slots[part]]),
                token_encoder=np.stack([s.encoder for s in slots[part]]),
                token_text=np.stack([s.text for s in slots[part]]),
                prompt=np.array(prompts[part], dtype=object),
            )
        )
    return records


def _write(path: Path, records: list[SampleRecord]) -> None:
    for record in records:
        write_samples(path, record)  # data first, complete flags last


def extract_range(
    backbone: Backbone,
    prepared: xr.Dataset,
    path: Path,
    start: int,
    stop: int,
    sigmas: list[float],
    layers: list[int],
    params: ExtractParams,
    style: PromptStyle,
    progress=None,
) -> int:
    """Extracts samples [start, stop) not yet complete, batch by batch, prompting as `style` says; returns how many were
    computed.

    Three stages overlap: the next batch is read from the prepared store and the previous one written to the
    attention store (compression included) on their own threads while the transformer runs. One write is in flight
    at a time, in batch order, each marking its samples complete only after their data, so the store is the same
    bit for bit and an interrupted run still resumes where it stopped.
    """
    done = completed(path)
    names = class_names(prepared)
    batches = [
        indices
        for batch_start in range(start, stop, params.batch_size)
        if (indices := [i for i in range(batch_start, min(batch_start + params.batch_size, stop)) if not done[i]])
    ]
    computed = 0
    with (
        ThreadPoolExecutor(1, thread_name_prefix="extract-read") as reader,
        ThreadPoolExecutor(1, thread_name_prefix="extract-write") as writer,
    ):
        load = lambda indices: prepared.isel(sample=indices).load()  # noqa: E731
        next_rows = reader.submit(load, batches[0]) if batches else None
        writing: tuple[Future, list[int]] | None = None
        for number, indices in enumerate(batches):
            where = f"extract: split '{params.split}', samples {indices}"  # a failure must say where
            try:
                rows = next_rows.result()
                if number + 1 < len(batches):
                    next_rows = reader.submit(load, batches[number + 1])
                records = _compute(backbone, rows, indices, names, sigmas, layers, params, style)
            except (ConfigError, DataError) as error:  # kept as they are: retrying cannot fix them
                raise type(error)(f"{where}: {error}") from None
            except Exception as error:
                raise RuntimeError(f"{where}: {error}") from error
            if writing is not None:
                _finish_write(path, *writing)  # the previous batch is on disk before the next one is queued
            writing = (writer.submit(_write, path, records), indices)
            computed += len(indices)
            if progress is not None:
                progress.update(len(indices))
        if writing is not None:
            _finish_write(path, *writing)
    return computed


def _finish_write(path: Path, writing: Future, indices: list[int]) -> None:
    """Waits for one batch's write; a failure names the samples written (not the batch computed meanwhile), and a
    full disk is a ResourceError (no retry frees disk)."""
    try:
        writing.result()
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceError(
                f"extract: no space left writing samples {indices} to {path}: free disk, or keep less (see the "
                "storage plan's settings); re-running resumes from the samples already complete"
            ) from None
        raise OSError(error.errno, f"extract: writing samples {indices} to {path}: {error}") from error
    except Exception as error:
        raise RuntimeError(f"extract: writing samples {indices} to {path}: {error}") from error


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    runs, first = [], indices[0]
    for previous, current in zip(indices, indices[1:] + [None]):
        if current != previous + 1:
            runs.append((first, previous + 1))
            first = current
    return runs


def kept_token_counts(
    backbone: Backbone, prepared: xr.Dataset, samples: int, params: ExtractParams, style: PromptStyle
) -> np.ndarray:
    """Returns how many text tokens each of the first `samples` samples keeps, from tokenization alone (no forward);
    raises ConfigError, naming the sample, when one needs more than extract.max_tokens."""
    names = class_names(prepared)
    present, captions = prepared["present"].values[:samples], prepared["caption"].values[:samples]
    built = [build_prompt(style, present[k], names, str(captions[k])) for k in range(samples)]
    tokens = PromptEncoding(None, None, backbone.prompt_tokens([prompt for prompt, _ in built]))  # no embeddings needed
    return np.array(
        [
            int(
                (
                    token_slots(
                        tokens, k, spans, params.tokens, params.max_tokens, f"{params.split}/{k}", style.columns
                    ).position
                    >= 0
                ).sum()
            )
            for k, (_, spans) in enumerate(built)
        ]
    )


def storage_plan(layout: StoreLayout, token_counts: np.ndarray, output: Path) -> dict:
    """Returns the bytes the store will take (kept tokens as counted; every slot full as the upper bound) and the free
    disk where it goes; raises ConfigError in one line when it cannot fit."""
    expected = float(sum(layout.sample_bytes(count) for count in token_counts))
    upper = layout.sample_bytes() * layout.samples
    target = Path(output).resolve()
    existing = next(p for p in (target, *target.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    plan = {
        "expected_gb": expected / 1e9,
        "upper_bound_gb": upper / 1e9,
        "free_gb": free / 1e9,
        "samples": layout.samples,
        "mean_tokens": float(np.mean(token_counts)) if len(token_counts) else 0.0,
    }
    if expected > 0.95 * free:
        raise ConfigError(
            f"extraction would write about {expected / 1e9:.1f} GB to {output} but {free / 1e9:.1f} GB are free: "
            "keep less (extract.head_mean: true, extract.layers, extract.directions: [image_to_text], "
            "extract.diagnostics: false, extract.max_samples) or free disk"
        )
    return plan
