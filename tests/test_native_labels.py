"""Native label size: every image keeps its own label size in the prepared store, masks are upsampled to it and every
metric is computed there; the working resolution may be non-square. Checked against a hand-computed reference."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from PIL import Image

from seg4diff.backbones.backbone import load_backbone
from seg4diff.backbones.noise import sample_noise
from seg4diff.capture.attention import capture_attention
from seg4diff.config import load_params
from seg4diff.data.prepare import build_source, prepare_split
from seg4diff.data.prepared import label_sizes, native_label, open_prepared
from seg4diff.evaluation.metrics import confusion_matrix, summarize
from seg4diff.prompts import PromptStyle, build_prompt, token_slots
from seg4diff.segmentation.masks import class_maps
from seg4diff.segmentation.zero_shot import (
    Readout,
    choose_predictor,
    expert_maps,
    segment_batch,
    segmentation_confusion,
)

SIZES = {"ADE_val_00000001": (24, 40), "ADE_val_00000002": (37, 21), "ADE_val_00000003": (30, 30)}  # (height, width)


def ade_of_mixed_sizes(root: Path) -> dict[str, np.ndarray]:
    """ADEChallengeData2016 with images of three sizes and aspects; returns the labels as the source reads them."""
    rng, labels = np.random.default_rng(1), {}
    base = root / "ADEChallengeData2016"
    for name, (height, width) in SIZES.items():
        for folder in ("images/validation", "annotations/validation"):
            (base / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(
            base / "images/validation" / f"{name}.jpg"
        )
        raw = np.zeros((height, width), np.uint8)  # 0 = "other", ignored after reduce-zero-label
        raw[height // 3 :, : width // 2] = 3  # ids 1..150 → 0..149
        raw[: height // 2, width // 2 :] = 13
        Image.fromarray(raw, mode="L").save(base / "annotations/validation" / f"{name}.png")
        labels[name] = np.where(raw == 0, 255, raw - 1).astype(np.uint8)
    return labels


def _prepare(tmp_path: Path, resolution):
    raw = ade_of_mixed_sizes(tmp_path / "raw")
    params = load_params(
        REPO / "params.yaml",
        {"data": {"root": str(tmp_path / "raw/ADEChallengeData2016")}, "prepare": {"resolution": resolution}},
        ["ade150"],
    )
    assert params.prepare.label_resolution == "native"  # the default
    summary = prepare_split(
        build_source(params.data, ["val"]), "val", tmp_path / "val.zarr", params.prepare, progress=False
    )
    assert summary.kept == 3 and not summary.skipped
    return raw, open_prepared(tmp_path / "val.zarr")


def test_labels_are_kept_at_their_native_size_and_the_store_maps_back(tmp_path):
    raw, prepared = _prepare(tmp_path, [32, 48])
    assert prepared.sizes["y"] == 32 and prepared.sizes["x"] == 48  # working resolution, non-square
    assert (prepared.sizes["label_y"], prepared.sizes["label_x"]) == (37, 40)  # the split's largest, padded
    for k, name in enumerate(SIZES):
        assert label_sizes(prepared)[k] == SIZES[name]
        assert (int(prepared.native_height[k]), int(prepared.native_width[k])) == SIZES[name]
        np.testing.assert_array_equal(native_label(prepared, k), raw[name])
        padded = prepared.label.values[k].copy()
        padded[: SIZES[name][0], : SIZES[name][1]] = 255
        assert (padded == 255).all()  # everything outside the native label is ignore


def test_predictions_are_upsampled_to_each_native_size_and_scored_there(tiny_model_dirs, tmp_path):
    raw, prepared = _prepare(tmp_path, [32, 48])
    backbone = load_backbone(
        load_params(
            REPO / "params.yaml", {"model": {"path": str(tiny_model_dirs["sd3"]), "dtype": "float32", "device": "cpu"}}
        ).model
    )
    rows = prepared.load()
    style = PromptStyle("gt_classes", " ", "word", "all")
    indices = list(range(3))
    predictions = segment_batch(backbone, rows, indices, Readout(1, 0.5, 0, style, None))
    assert predictions.shape == (3, 37, 40)

    # reference: the same maps upsampled by hand to each native size, argmax over the prompted classes
    names = [str(n) for n in rows.class_name.values]
    built = [build_prompt(style, rows.present.values[k], names, "") for k in indices]
    encoding = backbone.encode_prompts([p for p, _ in built])
    slots = [
        token_slots(encoding, k, spans, "class", len(encoding.tokens[0]), str(k), "all")
        for k, (_, spans) in enumerate(built)
    ]
    used = max(int((s.position >= 0).sum()) for s in slots)
    positions = torch.from_numpy(np.stack([s.position[:used] for s in slots]).astype(np.int64))
    maps = expert_maps(backbone, rows, indices, Readout(1, 0.5, 0, style, None), encoding, positions.clamp_min(0))
    assert maps.shape[-2:] == (8, 12)  # 32×48 pixels → an 8×12 token grid on the tiny SD3 (VAE 2 × patch 2)
    expected_confusion = np.zeros((150, 150), np.int64)
    for k, name in enumerate(SIZES):
        token_class = np.where(slots[k].position[:used] >= 0, slots[k].class_id[:used], -1)
        classes = np.unique(token_class[token_class >= 0])
        per_class = torch.from_numpy(class_maps(maps[k], token_class, classes))
        upsampled = F.interpolate(per_class[None], size=SIZES[name], mode="bilinear", align_corners=False)[0]
        expected = classes[upsampled.argmax(0).numpy()]
        height, width = SIZES[name]
        np.testing.assert_array_equal(predictions[k, :height, :width], expected)
        assert (predictions[k, height:, :] == 255).all() and (predictions[k, :, width:] == 255).all()
        valid = raw[name] != 255
        expected_confusion += np.bincount(
            raw[name][valid].astype(np.int64) * 150 + expected[valid], minlength=150 * 150
        ).reshape(150, 150)
    np.testing.assert_array_equal(confusion_matrix(predictions, rows.label.values, 150), expected_confusion)
    assert expected_confusion.sum() == sum(
        int((raw[n] != 255).sum()) for n in SIZES
    )  # every native pixel, nothing else


@pytest.mark.parametrize("resolution", [32, [32, 48]])
def test_working_resolution_square_as_the_authors_or_fixed_height_and_width(tmp_path, resolution):
    _, prepared = _prepare(tmp_path, resolution)
    expected = (32, 32) if resolution == 32 else (32, 48)
    assert prepared.image.shape[1:3] == expected


def test_mask_losses_and_every_evaluation_protocol_run_on_mixed_native_sizes(tiny_model_dirs, tmp_path):
    from seg4diff.backbones.backbone import model_digest
    from seg4diff.config import FinetuneParams, ModelParams, PromptParams
    from seg4diff.evaluation.protocols import evaluate_segmentation
    from seg4diff.training.magnet import MagnetConfig, magnet_loss

    _, prepared = _prepare(tmp_path, [32, 48])
    model = ModelParams(path=str(tiny_model_dirs["sd3"]))
    backbone = load_backbone(model)
    config = MagnetConfig.from_params(
        FinetuneParams(mask_max_sigma=None), PromptParams(separator=" ", background="word"), 1, 0.5, model_digest(model)
    )
    loss, parts = magnet_loss(backbone, prepared.load(), config, torch.Generator().manual_seed(0))
    assert np.isfinite(loss.item()) and parts["focal"] > 0 and 0 < parts["dice"] < 1  # three sizes, padding not scored
    readout = Readout(1, 0.5, 0, PromptStyle("gt_classes", " ", "word", "all"), None)
    results, gallery = evaluate_segmentation(backbone, prepared, readout, 2, 0.1, progress=False)
    for protocol in ("gt_classes", "vocabulary", "unsupervised_per_image_matching"):
        assert 0 <= results[protocol]["miou"] <= 1
    assert [gallery[k].shape for k in range(3)] == [(37, 40)] * 3


def test_logit_predictor_reads_head_mean_logits_at_sigmoid_half_and_is_chosen_on_val(tiny_model_dirs, tmp_path):
    _, prepared = _prepare(tmp_path, [32, 48])
    backbone = load_backbone(
        load_params(
            REPO / "params.yaml", {"model": {"path": str(tiny_model_dirs["sd3"]), "dtype": "float32", "device": "cpu"}}
        ).model
    )
    rows, indices = prepared.load(), [0, 1, 2]
    style = PromptStyle("gt_classes", " ", "word", "all")
    names = [str(n) for n in rows.class_name.values]
    built = [build_prompt(style, rows.present.values[k], names, "") for k in indices]
    encoding = backbone.encode_prompts([p for p, _ in built])
    slots = [
        token_slots(encoding, k, spans, "class", len(encoding.tokens[0]), str(k), "all")
        for k, (_, spans) in enumerate(built)
    ]
    used = max(int((s.position >= 0).sum()) for s in slots)
    positions = torch.from_numpy(np.stack([s.position[:used] for s in slots]).astype(np.int64)).clamp_min(0)
    logits = expert_maps(backbone, rows, indices, Readout(1, 0.5, 0, style, None, "logit"), encoding, positions)
    probabilities = expert_maps(backbone, rows, indices, Readout(1, 0.5, 0, style, None), encoding, positions)

    # per head, from one capture: probability = exp(logit − log-sum-exp over all keys); the predictors average heads
    images = torch.from_numpy(rows.image.values).permute(0, 3, 1, 2).float() / 255
    latents = backbone.encode_images(images)
    noise = torch.stack([sample_noise(latents.shape[1:], 0, i) for i in indices])
    with (
        torch.no_grad(),
        capture_attention(backbone.transformer, [1], ("image_to_text",), positions, output="logits") as cap,
    ):
        backbone.transformer(**backbone.transformer_inputs(0.5 * noise + 0.5 * latents, 0.5, encoding))
    per_head = cap.tensor("image_to_text")[:, 0]  # (batch, head, image_token, token)
    lse = cap.tensor("image_lse")[:, 0]
    as_maps = lambda x: x.transpose(-1, -2).reshape(3, used, 8, 12).numpy()  # noqa: E731
    np.testing.assert_allclose(logits, as_maps(per_head.mean(1)), atol=1e-5)
    np.testing.assert_allclose(probabilities, as_maps(torch.exp(per_head - lse[..., None]).mean(1)), atol=1e-6)

    predictions = segment_batch(backbone, rows, indices, Readout(1, 0.5, 0, style, 0.2, "logit"))
    background = 0
    for k, name in enumerate(SIZES):
        token_class = np.where(slots[k].position[:used] >= 0, slots[k].class_id[:used], -1)
        classes = np.unique(token_class[token_class >= 0])
        upsampled = F.interpolate(
            torch.from_numpy(class_maps(logits[k], token_class, classes))[None],
            size=SIZES[name],
            mode="bilinear",
            align_corners=False,
        )[0]
        best, index = upsampled.max(0)
        expected = np.where(best.numpy() < 0, 0, classes[index.numpy()])  # sigmoid(logit) < ½ → background (id 0)
        height, width = SIZES[name]
        np.testing.assert_array_equal(predictions[k, :height, :width], expected)
        background += int((best < 0).sum())
    assert background > 0  # the ½ boundary is crossed somewhere: the background rule is exercised

    chosen, curve = choose_predictor(backbone, prepared, Readout(1, 0.5, 0, style, 0.2), 2, ["probability", "logit"])
    for predictor, miou in curve.items():
        assert (
            miou
            == summarize(segmentation_confusion(backbone, prepared, Readout(1, 0.5, 0, style, 0.2, predictor), 2))[
                "miou"
            ]
        )
    assert curve[chosen] == max(curve.values())
