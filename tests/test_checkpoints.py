"""Fine-tuning checkpoints load without running code, round-trip exactly, and the work folder is seg4diff's alone."""

import io
import json
import math

import pytest
import torch
from crafted import Payload
from safetensors.torch import save_file

from seg4diff.backbones.lora import WEIGHTS
from seg4diff.errors import ConfigError, DataError
from seg4diff.ownership import MARKER, is_ours, mark
from seg4diff.training.checkpoints import (
    FINETUNE,
    PICKLED,
    TENSORS,
    VALUES,
    claim_work_dir,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from seg4diff.training.optim import adamw_warmup_cosine


def _training_state(steps: int = 3) -> tuple[dict, torch.optim.Optimizer]:
    """Returns (a checkpoint state after `steps` AdamW steps, the optimizer)."""
    parameters = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5))]
    optimizer, scheduler = adamw_warmup_cosine(parameters, 1e-2, 0.01, 1, 10)
    generator = torch.Generator().manual_seed(3)
    for _ in range(steps):
        for p in parameters:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()
        scheduler.step()
    history = [{"step": 0, "val_miou": 0.25, "val_flow_loss": 1 / 3}, {"step": 1, "train_loss": float("nan")}]
    state = {
        "step": steps,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": history,
        "best": {"val_miou": 0.25, "val_flow_loss": 1 / 3, "step": 0},
    }
    return state, optimizer


def _assert_same(a, b, where="state"):
    """Asserts a == b exactly: same types, tensors of the same dtype and values, NaN equal to NaN."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{k}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, where


def test_a_checkpoint_round_trips_every_tensor_and_value_without_a_pickle(tmp_path):
    state, optimizer = _training_state()
    adapter = {"lora_A": torch.randn(2, 3), "lora_B": torch.zeros(3, 2)}
    save_checkpoint(tmp_path, state, lambda folder: save_file(adapter, folder / WEIGHTS))
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint.name == "checkpoint-000003" and is_ours(checkpoint)
    assert sorted(p.name for p in checkpoint.iterdir()) == sorted([MARKER, WEIGHTS, TENSORS, VALUES])
    loaded = load_checkpoint(checkpoint)
    _assert_same({**state, "adapter": adapter}, loaded)
    # and into a fresh optimizer of the same parameters: the state it then holds is the one saved
    fresh, _ = adamw_warmup_cosine(
        [torch.nn.Parameter(torch.zeros(4, 3)), torch.nn.Parameter(torch.zeros(5))], 1, 0, 1, 10
    )
    fresh.load_state_dict(loaded["optimizer"])
    _assert_same(optimizer.state_dict(), fresh.state_dict())
    # a newer checkpoint replaces the older one
    save_checkpoint(tmp_path, {**state, "step": 4}, lambda folder: save_file(adapter, folder / WEIGHTS))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-000004"]


@pytest.mark.parametrize("file", [PICKLED, TENSORS, VALUES])
def test_a_crafted_pickle_in_a_checkpoint_is_refused_in_one_line_and_never_run(tmp_path, file):
    """The old format's state.pt, or pickle bytes in place of either new state file: a DataError naming the
    checkpoint, and the payload never runs."""
    state, _ = _training_state()
    save_checkpoint(tmp_path / "work", state, lambda folder: save_file({"w": torch.ones(1)}, folder / WEIGHTS))
    checkpoint = latest_checkpoint(tmp_path / "work")
    ran = tmp_path / "payload-ran"
    torch.save({"optimizer": Payload(ran)}, checkpoint / file)
    with pytest.raises(DataError) as refused:
        load_checkpoint(checkpoint)
    message = str(refused.value)
    assert "\n" not in message and str(checkpoint) in message and "start this fine-tuning over" in message
    assert (file != PICKLED) or "old pickled format" in message
    assert not ran.exists()
    # the payload is live: unpickling the file, as the old loader did, runs it
    torch.load(io.BytesIO((checkpoint / file).read_bytes()), weights_only=False)
    assert ran.exists()


def test_a_user_folder_as_work_dir_is_refused_and_left_alone(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "config.json").write_text('{"mine": true}')
    (user / "private.txt").write_text("keep me")
    with pytest.raises(ConfigError) as refused:
        claim_work_dir(user, json.dumps({"rank": 4}), FINETUNE)
    assert "\n" not in str(refused.value) and "finetune.work_dir" in str(refused.value)
    assert (user / "private.txt").read_text() == "keep me" and (user / "config.json").read_text() == '{"mine": true}'
    assert not is_ours(user)


def test_a_run_of_other_settings_is_moved_aside_and_moved_back_when_its_settings_return(tmp_path):
    work, first, second = tmp_path / "work", json.dumps({"rank": 4}), json.dumps({"rank": 8})
    assert "starting a new run" in claim_work_dir(work, first, FINETUNE) and is_ours(work)
    mark(work / "checkpoint-000002", "fine-tuning checkpoint")
    (work / "checkpoint-000002" / "adapter.bin").write_text("hours of GPU")
    said = claim_work_dir(work, second, FINETUNE)
    (moved,) = work.glob("previous-*")
    assert "\n" not in said and "finetune.work_dir" in said and f"moved it to {moved}" in said
    assert (moved / "checkpoint-000002" / "adapter.bin").read_text() == "hours of GPU"
    assert (moved / "config.json").read_text() == first and (work / "config.json").read_text() == second
    assert latest_checkpoint(work) is None  # the other settings' checkpoint is not resumed
    assert "same settings" in claim_work_dir(work, second, FINETUNE)
    said = claim_work_dir(work, first, FINETUNE)  # the first settings again: their run resumed, the second kept aside
    assert f"resuming the run of these settings moved aside earlier to {moved}" in said
    assert latest_checkpoint(work) == work / "checkpoint-000002" and not moved.exists()
    assert (work / "config.json").read_text() == first and len(list(work.glob("previous-*"))) == 1
