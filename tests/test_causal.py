"""The causal test's parts, each against an independent reference: perturbations (scipy's Gaussian filter, the naive
joint softmax), the shape reader (the Shapes dataset's own labels), paired bootstrap intervals; and the table."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from test_attention_capture import TEXT, _flux_inputs, _sd3_inputs
from tiny_pipelines import tiny_flux_transformer, tiny_sd3_transformer

from seg4diff.capture.families import joint_attention_modules
from seg4diff.capture.perturb import gaussian_blur, perturb, perturb_attention
from seg4diff.evaluation.metrics import miou_of
from seg4diff.evaluation.statistics import paired_mean_difference, paired_miou_difference
from seg4diff.organism.shape_reader import blob_shape, caption_objects, object_recall, objects
from seg4diff.testing.reference import naive_flux_attention, naive_sd3_attention


def _probabilities(seed=0, grid=(6, 5), keys=7):
    rng = np.random.default_rng(seed)
    p = torch.from_numpy(rng.dirichlet(np.ones(keys + 20), size=(2, 3, grid[0] * grid[1]))[..., :keys]).float()
    return p, grid


def test_blur_equals_scipys_gaussian_filter_and_every_perturbation_keeps_each_rows_text_mass():
    maps = torch.rand(2, 3, 16, 16)
    for sigma in (0.7, 2.0):
        expected = ndimage.gaussian_filter(maps.numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=3.0)
        np.testing.assert_allclose(gaussian_blur(maps, sigma).numpy(), expected, atol=1e-6)
    p, grid = _probabilities()
    permutation = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    for kind in ("blur", "mean", "shuffle"):
        changed = perturb(p, grid, kind, 1.5, permutation)
        torch.testing.assert_close(changed.sum(-1), p.sum(-1))  # image→image attention untouched
        assert (changed - p).abs().sum() > 0
    mean = perturb(p, grid, "mean")
    split = mean / mean.sum(-1, keepdim=True)  # every image query splits its text mass over the words alike
    torch.testing.assert_close(split, split[:, :, :1].expand_as(split))
    torch.testing.assert_close(split[:, :, 0], p.mean(2) / p.mean(2).sum(-1, keepdim=True))
    torch.testing.assert_close(perturb(p, grid, "shuffle", permutation=permutation), p[..., permutation])


def test_a_perturbed_layer_equals_the_naive_softmax_with_its_image_to_text_part_replaced():
    torch.manual_seed(0)
    transformer = tiny_sd3_transformer().eval()
    inputs = _sd3_inputs(transformer)
    layer, attn = 1, joint_attention_modules(transformer)[1]
    original, seen = attn.processor, {}
    handle = attn.register_forward_hook(lambda m, a, k, out: seen.update(kwargs=k, out=out), with_kwargs=True)
    with torch.no_grad(), perturb_attention(transformer, layer, "blur", blur_sigma=1.0) as processor:
        transformer(**inputs)
    handle.remove()
    hidden, text = seen["kwargs"]["hidden_states"], seen["kwargs"]["encoder_hidden_states"]
    n_image, heads = hidden.shape[1], attn.heads
    with torch.no_grad():
        p = naive_sd3_attention(attn, hidden, text)  # (batch, head, N, N), no library code
        replaced = p.clone()
        replaced[:, :, :n_image, n_image:] = perturb(p[:, :, :n_image, n_image:], (8, 8), "blur", 1.0)
        split = lambda t: t.view(t.shape[0], -1, heads, t.shape[-1] // heads).transpose(1, 2)  # noqa: E731
        v = torch.cat([split(attn.to_v(hidden)), split(attn.add_v_proj(text))], 2).float()
        out = (replaced @ v).transpose(1, 2).reshape(hidden.shape[0], -1, attn.heads * v.shape[-1])
        expected = attn.to_out[1](attn.to_out[0](out[:, :n_image]))
    torch.testing.assert_close(seen["out"][0], expected, atol=2e-5, rtol=1e-4)
    assert processor.calls == 1 and processor.strength > 0
    assert attn.processor is original  # restored on exit


@pytest.mark.parametrize("layer", [1, 3])  # a double-stream layer, a single-stream layer
def test_a_perturbed_flux_layer_equals_the_naive_softmax_with_its_image_to_text_part_replaced(layer):
    torch.manual_seed(0)
    transformer = tiny_flux_transformer().eval()
    inputs = _flux_inputs(transformer)
    attn = joint_attention_modules(transformer)[layer]
    original, seen = attn.processor, {}
    handle = attn.register_forward_hook(lambda m, a, k, out: seen.update(kwargs=k, out=out), with_kwargs=True)
    with torch.no_grad(), perturb_attention(transformer, layer, "shuffle", seed=3) as processor:
        transformer(**inputs)
    handle.remove()
    kwargs = seen["kwargs"]
    hidden, text, rotary = kwargs["hidden_states"], kwargs.get("encoder_hidden_states"), kwargs["image_rotary_emb"]
    n_text = TEXT
    with torch.no_grad():
        p = naive_flux_attention(
            attn, hidden, text, rotary
        )  # (batch, head, N, N), order [text, image], no library code
        replaced = p.clone()
        permutation = torch.randperm(TEXT, generator=torch.Generator().manual_seed(3))
        replaced[:, :, n_text:, :n_text] = p[:, :, n_text:, :n_text][..., permutation]
        v = attn.to_v(hidden).unflatten(-1, (-1, attn.head_dim))
        if text is not None:
            v = torch.cat([attn.add_v_proj(text).unflatten(-1, (-1, attn.head_dim)), v], 1)
        out = (replaced @ v.transpose(1, 2).float()).transpose(1, 2).flatten(2, 3)
        if text is not None:  # double-stream: the image part goes through to_out
            expected, got = attn.to_out[1](attn.to_out[0](out[:, n_text:])), seen["out"][0]
        else:
            expected, got = out, seen["out"]
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    assert processor.calls == 1 and processor.strength > 0 and processor.grid == (6, 6)
    assert attn.processor is original  # restored on exit


def test_the_shape_reader_reads_the_shapes_dataset(tmp_path):
    from seg4diff.config import ShapesParams
    from seg4diff.data.shapes import generate_split

    path = generate_split(
        tmp_path, "test", 60, ShapesParams(image_size=64, seed=3, num_train=1, num_val=1, num_test=60)
    )
    dataset = json.loads(path.read_text())
    recalls = {64: [], 32: []}
    for info in dataset["images"]:
        image = Image.open(tmp_path / "images/test" / info["file_name"]).convert("RGB")
        for size in recalls:
            recalls[size].append(
                object_recall(np.asarray(image.resize((size, size), Image.Resampling.BICUBIC)) / 255, info["caption"])
            )
    assert np.mean(recalls[64]) >= 0.95 and np.mean(recalls[32]) >= 0.88  # measured: 0.98 and 0.93 on 200 test images
    yy, xx = np.mgrid[:40, :40]
    assert blob_shape((yy - 20) ** 2 + (xx - 20) ** 2 <= 12**2) == "circle"
    assert blob_shape((abs(yy - 20) + abs(xx - 20)) <= 12) == "square"  # a square turned 45°
    assert blob_shape((yy >= 8) & (abs(xx - 20) <= (yy - 8) * 0.577)) == "triangle"
    assert caption_objects("red circle and background and blue square") == {("red", "circle"), ("blue", "square")}
    grey = np.full((32, 32, 3), 0.5)
    assert (
        objects(grey) == [] and object_recall(grey, "red circle") == 0.0 and np.isnan(object_recall(grey, "background"))
    )


def test_paired_intervals():
    rng = np.random.default_rng(0)
    a = rng.random(50)
    shifted = paired_mean_difference(a, a + 0.1, resamples=200)
    assert (
        shifted["delta"] == pytest.approx(0.1)
        and shifted["ci_low"] == pytest.approx(0.1)
        and shifted["ci_high"] == pytest.approx(0.1)
    )
    noisy = paired_mean_difference(a, a + rng.normal(0.05, 0.1, 50), resamples=500)
    assert noisy["ci_low"] < noisy["delta"] < noisy["ci_high"]
    stats_a = rng.integers(0, 50, (40, 3, 4))
    stats_a[:, 1:] += stats_a[:, :1]  # label and prediction areas hold the true positives
    stats_b = stats_a.copy()
    stats_b[:, 0] = stats_a[:, 0] // 2
    d = paired_miou_difference(stats_a, stats_b, resamples=300)
    assert d["a"] == pytest.approx(miou_of(stats_a.sum(0))) and d["delta"] == pytest.approx(d["b"] - d["a"])
    assert d["ci_high"] < 0 and d["ci_low"] <= d["delta"] <= d["ci_high"]


def test_the_causal_table_runs_on_flux_double_and_single_stream_layers(tiny_model_dirs, tmp_path):
    from conftest import prepared_shapes

    from seg4diff.backbones.backbone import load_backbone
    from seg4diff.config import CausalParams, ModelParams
    from seg4diff.data.prepared import open_prepared
    from seg4diff.evaluation.causal import causal_table
    from seg4diff.prompts import PromptStyle

    root = prepared_shapes(tmp_path, ["val"], 32, 32, seed=0, num_val=3)
    backbone = load_backbone(ModelParams(path=str(tiny_model_dirs["flux"])))
    layers = [
        0,
        len(backbone.transformer.transformer_blocks),
    ]  # the first double-stream and the first single-stream layer
    settings = CausalParams(
        perturbations=["shuffle", "mean"],
        blur_sigma=1.0,
        generation_steps=2,
        guidance=1.0,
        flow_samples=3,
        flow_sigmas=[0.5],
        bootstrap_resamples=200,
        seed=0,
    )
    table, examples = causal_table(
        backbone,
        ["red circle", "blue square"],
        open_prepared(root / "val.zarr"),
        PromptStyle("gt_classes", " ", "word", "all"),
        settings,
        layers,
        progress=False,
    )
    flow = table[table.metric == "flow_loss_increase"]
    assert (
        len(flow) == 4 and np.isfinite(flow.delta).all() and (flow.delta.abs() > 0).all()
    )  # every run changed the loss
    assert set(examples) == {"baseline", *((b, k) for b in layers for k in ("shuffle", "mean"))}
