"""Pretraining checkpoints: an interrupted run resumes bit-identical, and the work folder loads nothing that runs
code nor takes over a user's folder."""

import numpy as np
import pytest
import torch
from crafted import Payload

from seg4diff.config import ArchitectureParams, PretrainParams
from seg4diff.errors import ConfigError, DataError
from seg4diff.organism.pipeline import Architecture, OrganismPipeline
from seg4diff.ownership import is_ours
from seg4diff.training.checkpoints import PICKLED, TENSORS, VALUES, checkpoints, latest_checkpoint
from seg4diff.training.pretrain import train, training_settings

WORDS = ["red", "blue", "circle", "square", "and"]
DIGEST = "0123456789abcdef"  # stands for the prepared train split's content digest
# checkpoints every 4 steps, log points every 3: a checkpoint at step 8 holds losses 7 and 8 not yet logged
SCHEDULE = PretrainParams(
    steps=12,
    batch_size=4,
    lr=3e-3,
    warmup_steps=2,
    caption_dropout=0.5,
    seed=1,
    log_every=3,
    checkpoint_every=4,
    architecture=ArchitectureParams(num_layers=2, num_attention_heads=2, attention_head_dim=8, text_length=8),
)


def _pipe() -> OrganismPipeline:
    return OrganismPipeline.build(WORDS, Architecture.from_params(SCHEDULE.architecture, 16), seed=0)


def _data(n=8):
    """Returns (tiny random images (n, 3, 16, 16) in [−1, 1], captions)."""
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.uniform(-1, 1, (n, 3, 16, 16)).astype(np.float32))
    captions = [f"{rng.choice(['red', 'blue'])} {rng.choice(['circle', 'square'])}" for _ in range(n)]
    return images, captions


def _weights(pipe: OrganismPipeline) -> dict:
    return {f"{k}.{name}": v for k, m in enumerate(pipe.modules) for name, v in m.state_dict().items()}


def _assert_same_weights(a: OrganismPipeline, b: OrganismPipeline) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), [k for k in wa if not torch.equal(wa[k], wb[k])]


class Stop(Exception):
    pass


def test_an_interrupted_pretraining_resumes_bit_identical_to_an_uninterrupted_one(tmp_path, capsys):
    images, captions = _data()
    plain = _pipe()
    plain_log = train(plain, images, captions, SCHEDULE, progress=False)  # no work_dir: no checkpoints
    whole, whole_calls = _pipe(), []
    whole_log = train(
        whole,
        images,
        captions,
        SCHEDULE,
        on_log=lambda *call: whole_calls.append(call),
        progress=False,
        work_dir=tmp_path / "whole",
        data_digest=DIGEST,
    )
    assert whole_log.steps == [3, 6, 9, 12] and whole_log.losses == plain_log.losses
    _assert_same_weights(plain, whole)  # checkpointing changes nothing

    def stop_at_step_9(step, loss):
        if step == 9:
            raise Stop

    work = tmp_path / "resumed"
    with pytest.raises(Stop):
        train(
            _pipe(),
            images,
            captions,
            SCHEDULE,
            on_log=stop_at_step_9,
            progress=False,
            work_dir=work,
            data_digest=DIGEST,
        )
    assert [p.name for p in checkpoints(work)] == ["checkpoint-000008"]  # only the newest is kept
    capsys.readouterr()
    resumed, resumed_calls = _pipe(), []
    resumed_log = train(
        resumed,
        images,
        captions,
        SCHEDULE,
        on_log=lambda *call: resumed_calls.append(call),
        progress=False,
        work_dir=work,
        data_digest=DIGEST,
    )
    assert f"pretrain.work_dir {work}: continuing the run of the same settings there" in capsys.readouterr().out
    assert resumed_log.steps == whole_log.steps and resumed_log.losses == whole_log.losses
    assert resumed_calls == whole_calls  # the restored log points are handed to on_log first
    _assert_same_weights(whole, resumed)
    # the last checkpoint is a loadable organism, and a finished run trains nothing more
    assert [p.name for p in checkpoints(work)] == ["checkpoint-000012"]
    _assert_same_weights(whole, OrganismPipeline.from_pretrained(latest_checkpoint(work)))
    again = _pipe()
    assert train(again, images, captions, SCHEDULE, progress=False, work_dir=work, data_digest=DIGEST).losses == (
        whole_log.losses
    )
    _assert_same_weights(whole, again)


def test_the_settings_of_a_run_are_what_decides_its_weights():
    vocabulary = ["[PAD]", "[UNK]", *WORDS]
    same = training_settings(SCHEDULE, DIGEST, vocabulary)
    for unchanged in ({"log_every": 5}, {"checkpoint_every": 2}, {"output": "x"}, {"work_dir": "y"}, {"guidance": 2}):
        assert training_settings(SCHEDULE.model_copy(update=unchanged), DIGEST, vocabulary) == same, unchanged
    assert training_settings(SCHEDULE.model_copy(update={"lr": 1e-3}), DIGEST, vocabulary) != same
    assert training_settings(SCHEDULE, "fedcba9876543210", vocabulary) != same
    assert training_settings(SCHEDULE, DIGEST, vocabulary[:-1]) != same


@pytest.mark.parametrize("file", [PICKLED, TENSORS, VALUES])
def test_a_crafted_pickle_in_the_pretrain_work_dir_is_refused_and_never_run(tmp_path, file):
    """The old format's state.pt, or pickle bytes in place of a state file, in the newest checkpoint of a run of the
    same settings: a DataError naming the checkpoint before any training step, and the payload never runs."""
    images, captions = _data()
    short = SCHEDULE.model_copy(update={"steps": 4})
    work = tmp_path / "work"
    train(_pipe(), images, captions, short, progress=False, work_dir=work, data_digest=DIGEST)
    checkpoint = latest_checkpoint(work)
    ran = tmp_path / "payload-ran"
    torch.save({"optimizer": Payload(ran)}, checkpoint / file)
    fresh, untouched, calls = _pipe(), _pipe(), []
    with pytest.raises(DataError) as refused:
        train(
            fresh,
            images,
            captions,
            short,
            on_log=lambda *c: calls.append(c),
            progress=False,
            work_dir=work,
            data_digest=DIGEST,
        )
    message = str(refused.value)
    assert "\n" not in message and str(checkpoint) in message and "start this pretraining over" in message
    assert not ran.exists() and not calls
    _assert_same_weights(fresh, untouched)


def test_a_user_folder_as_pretrain_work_dir_is_refused_and_kept(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "config.json").write_text('{"mine": true}')
    (user / "private.txt").write_text("keep me")
    images, captions = _data()
    with pytest.raises(ConfigError) as refused:
        train(_pipe(), images, captions, SCHEDULE, progress=False, work_dir=user, data_digest=DIGEST)
    assert "\n" not in str(refused.value) and f"pretrain.work_dir: {user}" in str(refused.value)
    assert sorted(p.name for p in user.iterdir()) == ["config.json", "private.txt"] and not is_ours(user)
    assert (user / "private.txt").read_text() == "keep me"
