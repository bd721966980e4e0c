import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import prepared_shapes
from crafted import Payload

from seg4diff.backbones.backbone import load_backbone, model_digest
from seg4diff.backbones.lora import lora_state
from seg4diff.capture.attention import capture_attention
from seg4diff.config import FinetuneParams, ModelParams, PromptParams
from seg4diff.data.prepared import open_prepared
from seg4diff.data.shapes_vocabulary import CLASS_NAMES
from seg4diff.errors import ConfigError, DataError
from seg4diff.organism.pipeline import Architecture, OrganismPipeline
from seg4diff.ownership import is_ours, mark
from seg4diff.prompts import build_prompt, token_slots
from seg4diff.segmentation.masks import class_maps
from seg4diff.training.losses import predictor_loss
from seg4diff.training.magnet import (
    MagnetConfig,
    latest_checkpoint,
    magnet_loss,
    mask_sigmas,
    publish_adapter,
    sample_sigmas,
    train_magnet,
)

ARCH = Architecture(
    num_layers=3,
    num_attention_heads=2,
    attention_head_dim=8,
    image_size=16,
    text_length=10,
    text_layers=0,
    pooled="mean",
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = prepared_shapes(tmp_path_factory.mktemp("ft"), ["train", "val"], 16, 16, seed=2, num_train=12, num_val=4)
    words = sorted({w for n in CLASS_NAMES for w in n.split()} | {"and", "background"})
    OrganismPipeline.build(words, ARCH, seed=0).save_pretrained(root / "organism")
    return root


def _backbone(root):
    return load_backbone(ModelParams(path=str(root / "organism")))


FINETUNE = FinetuneParams(
    rank=4,
    alpha=4,
    steps=4,
    batch_size=2,
    lr=1e-2,
    warmup_steps=1,
    checkpoint_every=2,
    validate_every=100,
    validation_samples=4,
    seed=1,
    lambda_flow=1.0,
    mask_max_sigma=None,
)
PROMPT = PromptParams(separator=" ", background="word")


def _config(root, **finetune) -> MagnetConfig:
    """Expert block 1 at σ 0.5 of the organism under root, with FINETUNE's settings changed by `finetune`."""
    digest = model_digest(ModelParams(path=str(root / "organism")))
    return MagnetConfig.from_params(FINETUNE.model_copy(update=finetune), PROMPT, 1, 0.5, digest)


def test_one_step_changes_only_lora_parameters(setup):
    backbone = _backbone(setup)
    before = {k: v.clone() for k, v in backbone.transformer.state_dict().items()}
    text_before = {k: v.clone() for k, v in backbone.pipe.text_encoder.state_dict().items()}
    train_magnet(
        backbone,
        open_prepared(setup / "train.zarr"),
        open_prepared(setup / "val.zarr"),
        _config(setup, steps=1),
        setup / "one",
        progress=False,
    )
    after = backbone.transformer.state_dict()
    base = {k.replace(".base_layer", ""): v for k, v in after.items() if "lora_" not in k}
    assert base.keys() == before.keys() and all(torch.equal(before[k], base[k]) for k in before)  # frozen backbone
    lora_b = [v for k, v in after.items() if "lora_B" in k]
    assert len(lora_b) == 3 * 4 and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: every adapter moved
    assert all(torch.equal(v, backbone.pipe.text_encoder.state_dict()[k]) for k, v in text_before.items())


def test_mask_losses_come_from_the_expert_block_with_gradients(setup):
    backbone = _backbone(setup)
    from seg4diff.backbones.lora import add_lora

    add_lora(backbone.transformer, _config(setup).lora)
    rows = open_prepared(setup / "train.zarr").isel(sample=[0, 1]).load()
    loss, parts = magnet_loss(backbone, rows, _config(setup), torch.Generator().manual_seed(0))
    loss.backward()
    grads = {n: p.grad for n, p in backbone.transformer.named_parameters() if p.grad is not None}
    assert parts["focal"] > 0 and 0 < parts["dice"] < 1 and parts["flow"] > 0
    assert loss.item() == pytest.approx(parts["flow"] + 0.1 * parts["focal"] + 0.2 * parts["dice"], rel=1e-5)
    # blocks after the expert receive gradient only through the flow loss; turning the flow loss off leaves them at zero
    backbone.transformer.zero_grad()
    mask_only = _config(setup, lambda_flow=0.0)
    magnet_loss(backbone, rows, mask_only, torch.Generator().manual_seed(0))[0].backward()
    late = [p.grad for n, p in backbone.transformer.named_parameters() if "transformer_blocks.2." in n and "lora_" in n]
    early = [
        p.grad for n, p in backbone.transformer.named_parameters() if "transformer_blocks.0." in n and "lora_B" in n
    ]
    assert all(g is None or g.abs().sum() == 0 for g in late)
    assert any(g is not None and g.abs().sum() > 0 for g in early)
    assert grads


def test_predictor_loss_is_the_cross_entropy_of_the_zero_shot_predictor_on_the_captured_probabilities(setup):
    """mask_loss 'predictor': the term equals losses.predictor_loss on maps built independently — the capture's own
    probabilities at the same noise and σ, head-mean, token-mean (masks.class_maps), upsampled to the label."""
    backbone = _backbone(setup)
    rows = open_prepared(setup / "train.zarr").isel(sample=[0, 1, 2]).load()
    config = replace(
        _config(setup, mask_loss="predictor", lambda_predictor=0.5),
        prompt=PromptParams(separator=" ", background="threshold"),
    )
    loss, parts = magnet_loss(backbone, rows, config, torch.Generator().manual_seed(0))
    assert parts["focal"] == parts["dice"] == 0 and parts["predictor"] > 0
    assert loss.item() == pytest.approx(parts["flow"] + 0.5 * parts["predictor"], rel=1e-5)

    names = [str(n) for n in rows.class_name.values]
    built = [build_prompt(config.style, rows.present.values[k], names, "") for k in range(3)]
    encoding = backbone.encode_prompts([p for p, _ in built])
    slots = [
        token_slots(encoding, k, spans, "class", len(encoding.tokens[0]), str(k), "all")
        for k, (_, spans) in enumerate(built)
    ]
    used = max(int((slot.position >= 0).sum()) for slot in slots)
    positions = torch.from_numpy(np.stack([slot.position[:used] for slot in slots]).astype(np.int64)).clamp_min(0)
    x0 = backbone.encode_images(torch.from_numpy(rows.image.values).permute(0, 3, 1, 2).float() / 255)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=generator)
    sigma = sample_sigmas(generator, 3, config)
    with torch.no_grad(), capture_attention(backbone.transformer, [1], ("image_to_text",), positions) as cap:
        backbone.transformer(
            **backbone.transformer_inputs(
                sigma.view(-1, 1, 1, 1) * noise + (1 - sigma.view(-1, 1, 1, 1)) * x0, sigma, encoding
            )
        )
    maps = cap.maps().isel(layer=0).mean("head").transpose("batch", "text_token", "y", "x").values
    expected = []
    for k, slot in enumerate(slots):
        token_class = np.where(slot.position[:used] >= 0, slot.class_id[:used], -1)
        classes = np.unique(token_class[token_class >= 0])
        label = torch.from_numpy(rows.label.values[k].astype(np.int64))
        up = F.interpolate(
            torch.from_numpy(class_maps(maps[k], token_class, classes))[None],
            size=label.shape,
            mode="bilinear",
            align_corners=False,
        )[0]
        expected.append(predictor_loss(up, label, classes, 0.2).item())
    assert parts["predictor"] == pytest.approx(np.mean(expected), rel=1e-4)
    with pytest.raises(ValueError, match="needs mode 'gt_classes'"):
        FinetuneParams(mode="caption", mask_loss="predictor")


def test_mask_max_sigma_keeps_mask_losses_to_less_noisy_samples(setup):
    """Same generator → same σ per sample: with a cap below every drawn σ no mask term remains, above all they all
    do."""
    backbone = _backbone(setup)
    rows = open_prepared(setup / "train.zarr").isel(sample=[0, 1]).load()
    parts = {
        cap: magnet_loss(backbone, rows, _config(setup, mask_max_sigma=cap), torch.Generator().manual_seed(0))[1]
        for cap in (None, 1e-6, 1.0)
    }
    assert parts[1e-6]["focal"] == parts[1e-6]["dice"] == 0 and parts[1e-6]["loss"] == pytest.approx(
        parts[None]["flow"]
    )
    assert parts[1.0] == pytest.approx(parts[None]) and parts[None]["focal"] > 0


def test_mask_sigma_expert_supervises_at_the_readouts_sigma_and_keeps_the_flow_loss_on_its_own(setup):
    """mask_sigma 'expert': the flow term is the shared mode's (same generator draws first), the mask terms come from a
    second forward at σ drawn around the expert's σ (0.5 here), whatever mask_max_sigma says."""
    config = _config(setup, mask_sigma="expert", mask_sigma_std=0.3, mask_max_sigma=1e-6)
    drawn = mask_sigmas(torch.Generator().manual_seed(0), 10_000, config)
    assert float(drawn.median()) == pytest.approx(0.5, abs=0.01)
    assert float(((drawn > 0.4) & (drawn < 0.6)).double().mean()) == pytest.approx(0.823, abs=0.01)  # P(|z| < 1.35)
    at_01 = mask_sigmas(torch.Generator().manual_seed(0), 10_000, replace(config, expert_sigma=0.1))
    assert float(at_01.median()) == pytest.approx(0.1, abs=0.002) and float((at_01 <= 0.2).double().mean()) > 0.97
    backbone = _backbone(setup)
    rows = open_prepared(setup / "train.zarr").isel(sample=[0, 1]).load()
    expert = magnet_loss(backbone, rows, config, torch.Generator().manual_seed(0))[1]
    shared = magnet_loss(backbone, rows, _config(setup), torch.Generator().manual_seed(0))[1]
    assert expert["flow"] == pytest.approx(shared["flow"], rel=1e-6)  # the same σ and noise for the flow term
    assert expert["focal"] > 0 and expert["dice"] > 0 and expert["focal"] != pytest.approx(shared["focal"])


def test_resume_from_checkpoint_equals_an_uninterrupted_run(setup, tmp_path):
    train, val = open_prepared(setup / "train.zarr"), open_prepared(setup / "val.zarr")
    whole = _backbone(setup)
    train_magnet(whole, train, val, _config(setup), tmp_path / "whole", progress=False)

    class Stop(Exception):
        pass

    def stop_after_checkpoint(step, metrics):
        if step == 3:
            raise Stop

    interrupted = _backbone(setup)
    with pytest.raises(Stop):
        train_magnet(
            interrupted,
            train,
            val,
            _config(setup),
            tmp_path / "resumed",
            on_metrics=stop_after_checkpoint,
            progress=False,
        )
    assert latest_checkpoint(tmp_path / "resumed").name == "checkpoint-000002"
    resumed = _backbone(setup)
    result = train_magnet(resumed, train, val, _config(setup), tmp_path / "resumed", progress=False)
    assert [h["step"] for h in result["history"]] == [0, 1, 2, 3, 4]  # step 0: the base model's validation
    a, b = lora_state(whole.transformer), lora_state(resumed.transformer)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the saved adapter loads onto a fresh base model and reproduces the fine-tuned outputs
    loaded = load_backbone(ModelParams(path=str(setup / "organism")), lora=tmp_path / "whole" / "best")
    c = lora_state(loaded.transformer)
    assert c.keys() == a.keys()
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in c.items() if "lora_B" in k)


def test_an_adapter_for_another_base_model_is_refused_in_one_line(setup, tmp_path):
    backbone = _backbone(setup)
    train_magnet(
        backbone,
        open_prepared(setup / "train.zarr"),
        open_prepared(setup / "val.zarr"),
        replace(_config(setup, steps=1), base_model="0123456789abcdef"),
        tmp_path / "other",
        progress=False,
    )
    with pytest.raises(ConfigError) as refused:
        load_backbone(ModelParams(path=str(setup / "organism")), lora=tmp_path / "other" / "best")
    message = str(refused.value)
    assert "\n" not in message and "trained on another base model (digest 0123456789abcdef" in message


@pytest.mark.parametrize("family", ["sd3", "sd35", "flux"])
def test_lora_adapts_the_image_stream_of_the_joint_attention_only(family):
    """SD3: every joint block's to_q/k/v/out; SD3.5: not the image-only attn2; FLUX: double-stream blocks only."""
    from tiny_pipelines import tiny_flux_transformer, tiny_sd3_transformer

    from seg4diff.backbones.lora import LoraSpec, add_lora

    transformer = tiny_flux_transformer() if family == "flux" else tiny_sd3_transformer(sd35=family == "sd35")
    add_lora(transformer, LoraSpec(2, 2, 0.0, ("to_q", "to_k", "to_v", "to_out.0")))
    adapted = sorted({name.rsplit(".lora_", 1)[0] for name, _ in transformer.named_parameters() if ".lora_A" in name})
    blocks = len(transformer.transformer_blocks)
    assert len(adapted) == 4 * blocks
    assert all(name.startswith("transformer_blocks.") and ".attn." in name for name in adapted)
    assert not any("attn2" in name or "single_transformer_blocks" in name or "add_" in name for name in adapted)


def test_a_user_folder_as_work_dir_is_refused_not_replaced_by_checkpoints(setup, tmp_path):
    """A finetune.work_dir holding a config.json seg4diff did not write used to be deleted and refilled."""
    user = tmp_path / "mine"
    user.mkdir()
    (user / "config.json").write_text('{"mine": true}')
    (user / "private.txt").write_text("keep me")
    with pytest.raises(ConfigError) as refused:
        train_magnet(
            _backbone(setup),
            open_prepared(setup / "train.zarr"),
            open_prepared(setup / "val.zarr"),
            _config(setup, steps=1),
            user,
            progress=False,
        )
    assert "\n" not in str(refused.value) and f"finetune.work_dir: {user}" in str(refused.value)
    assert sorted(p.name for p in user.iterdir()) == ["config.json", "private.txt"]
    assert (user / "private.txt").read_text() == "keep me"


def test_resuming_never_unpickles_a_crafted_state_file(setup, tmp_path):
    """A state.pt planted in the newest checkpoint of a work folder of the same settings: refused, never run."""
    config = _config(setup)
    work = tmp_path / "work"
    mark(work, "fine-tuning work folder")
    (work / "config.json").write_text(json.dumps(config.as_dict(), sort_keys=True))
    checkpoint = work / "checkpoint-000002"
    mark(checkpoint, "fine-tuning checkpoint")
    ran = tmp_path / "payload-ran"
    torch.save({"step": 2, "optimizer": Payload(ran)}, checkpoint / "state.pt")
    with pytest.raises(DataError) as refused:
        train_magnet(
            _backbone(setup), open_prepared(setup / "train.zarr"), open_prepared(setup / "val.zarr"), config, work
        )
    assert "\n" not in str(refused.value) and str(checkpoint / "state.pt") in str(refused.value)
    assert not ran.exists()


def test_changed_settings_move_the_previous_checkpoints_aside_and_back(setup, tmp_path, capsys):
    """Other settings in the same work_dir: the earlier run is moved to previous-<hash>, said in one line, and resumed
    (not retrained) when its settings come back."""
    train, val = open_prepared(setup / "train.zarr"), open_prepared(setup / "val.zarr")
    first, second = _config(setup, steps=2), _config(setup, steps=1, lr=5e-3)
    work = tmp_path / "work"
    train_magnet(_backbone(setup), train, val, first, work, progress=False)
    capsys.readouterr()
    train_magnet(_backbone(setup), train, val, second, work, progress=False)
    said = capsys.readouterr().out.strip().splitlines()
    (moved,) = work.glob("previous-*")
    assert len(said) == 1 and f"finetune.work_dir {work}: held a run of other settings: moved it to {moved}" in said[0]
    assert (moved / "checkpoint-000002" / "state.safetensors").is_file() and (moved / "best").is_dir()
    assert latest_checkpoint(work).name == "checkpoint-000001"
    steps = []
    result = train_magnet(_backbone(setup), train, val, first, work, lambda step, _: steps.append(step), False)
    assert "resuming the run of these settings" in capsys.readouterr().out
    assert steps == [] and [h["step"] for h in result["history"]] == [0, 1, 2]  # restored at its end: nothing rerun
    assert latest_checkpoint(work).name == "checkpoint-000002" and len(list(work.glob("previous-*"))) == 1


def test_publish_adapter_refuses_a_user_folder_as_finetune_output(tmp_path):
    """finetune.output was deleted before the best adapter was copied there; now only a folder seg4diff wrote is."""
    best = tmp_path / "work" / "best"
    mark(best, "MAGNET adapter")
    (best / "adapter_model.safetensors").write_text("weights")
    user = tmp_path / "mine"
    user.mkdir()
    (user / "config.json").write_text("{}")
    (user / "private.txt").write_text("keep me")
    with pytest.raises(ConfigError) as refused:
        publish_adapter(best, user)
    assert "\n" not in str(refused.value) and f"finetune.output: {user}" in str(refused.value)
    assert sorted(p.name for p in user.iterdir()) == ["config.json", "private.txt"]
    output = tmp_path / "lora"
    publish_adapter(best, output)
    (best / "adapter_model.safetensors").write_text("better weights")
    publish_adapter(best, output)  # a folder seg4diff published is replaced
    assert is_ours(output) and (output / "adapter_model.safetensors").read_text() == "better weights"
