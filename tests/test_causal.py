"""The causal test's parts, each against an independent reference: perturbations (scipy's Gaussian filter, the naive
joint softmax, hand-made permutations), the word control's permutations (the tokenizers' own special and padding
positions), dose calibration, the shape reader (the Shapes dataset's own labels), paired bootstrap intervals; and the
table, on FLUX and on a tiny organism."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import ndimage
from test_attention_capture import TEXT, _flux_inputs, _sd3_inputs
from tiny_pipelines import tiny_flux_transformer, tiny_sd3_transformer

from seg4diff.capture.attention import capture_attention
from seg4diff.capture.families import joint_attention_modules
from seg4diff.capture.intervention import interventions_on
from seg4diff.capture.perturb import (
    PromptRows,
    WordShuffle,
    gaussian_blur,
    perturb,
    perturb_attention,
    word_derangement,
    word_permutations,
)
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


def test_word_permutations_move_every_word_to_another_word_and_never_touch_padding_or_special_positions(
    tiny_model_dirs,
):
    from seg4diff.backbones.backbone import load_backbone
    from seg4diff.config import ModelParams

    backbone = load_backbone(ModelParams(path=str(tiny_model_dirs["sd3"])))  # real CLIP BPE + T5 tokenizers
    prompts = ["red circle and background and blue square", "blue square and red circle", "red", "", "a photo of x"]
    prompts.append("red circle and blue square")  # the words of prompts[1] in another order
    tokens = backbone.prompt_tokens(prompts)
    tables = [word_permutations(prompts, tokens, seed=0, draw=draw) for draw in range(3)]
    for table in tables:
        assert table.shape == (len(prompts), len(tokens[0]))
        for prompt, row, prompt_tokens in zip(prompts, table.numpy(), tokens):
            assert sorted(row) == list(range(len(row)))  # a permutation of the text positions
            words = [p for p, t in enumerate(prompt_tokens) if t.end > t.start]
            fixed = [p for p in range(len(row)) if p not in words]
            assert (row[fixed] == fixed).all()  # padding, BOS/EOS and </s> untouched
            for p in words:  # a word's map comes from another word of its encoder (each prompt here allows it)
                source = prompt_tokens[row[p]]
                assert row[p] in words and source.encoder == prompt_tokens[p].encoder
                if sum(t.encoder == prompt_tokens[p].encoder for t in (prompt_tokens[q] for q in words)) >= 2:
                    assert source.token != prompt_tokens[p].token
        assert (table[2:4] == torch.arange(table.shape[1])).all()  # one word, no word: nothing to move
    assert (tables[0] != tables[1]).any() and any((table[1] != table[5]).any() for table in tables)  # per draw, prompt
    assert torch.equal(tables[0], word_permutations(prompts, tokens, seed=0, draw=0))  # seeded: the same again
    assert torch.equal(word_permutations(prompts[:2][::-1], tokens[:2][::-1], 0, 0), tables[0][:2].flip(0))
    rng = np.random.default_rng(0)
    assert (word_derangement(["and", "and", "and", "x"], rng) != np.arange(4)).all()  # impossible by word: by place
    assert list(word_derangement(["a", "b"], rng)) == [1, 0]


def test_a_perturbation_at_strength_alpha_keeps_each_rows_text_mass_and_changes_it_alpha_times_the_full_change():
    p, grid = _probabilities()
    per_sample = torch.stack([torch.tensor([0, 2, 1, 3, 4, 5, 6]), torch.tensor([3, 1, 0, 2, 4, 6, 5])])
    for kind, permutation in (("blur", None), ("mean", None), ("word_shuffle", per_sample), ("shuffle", per_sample[1])):
        full = (perturb(p, grid, kind, 1.5, permutation) - p).abs().sum(-1)
        for alpha in (0.1, 0.5, 1.0):
            mixed = perturb(p, grid, kind, 1.5, permutation, alpha)
            torch.testing.assert_close(mixed.sum(-1), p.sum(-1))
            torch.testing.assert_close((mixed - p).abs().sum(-1), alpha * full)
    shuffled = perturb(p, grid, "word_shuffle", permutation=per_sample)
    for b in range(2):  # each sample by its own permutation
        torch.testing.assert_close(shuffled[b], p[b][..., per_sample[b]])


def test_word_shuffle_permutes_each_forward_row_by_the_prompt_it_came_from():
    torch.manual_seed(0)
    transformer = tiny_sd3_transformer().eval()
    inputs = _sd3_inputs(transformer)
    text = inputs["encoder_hidden_states"]
    unconditional = torch.randn(1, *text.shape[1:], generator=torch.Generator().manual_seed(9))
    rows = PromptRows(torch.cat([unconditional, text.flip(0)]))  # registered in another order than the batch
    permutations = torch.stack([torch.arange(TEXT), torch.tensor([1, 0, 2, 3, 4, 5, 6]), torch.arange(TEXT).roll(1)])
    words = WordShuffle(rows, permutations)
    layer = 1
    with torch.no_grad(), capture_attention(transformer, [layer], ("image_to_text",)) as stock:
        transformer(**inputs)
    with torch.no_grad():
        with perturb_attention(transformer, layer, "word_shuffle", alpha=0.5, words=words) as perturbation:
            with capture_attention(transformer, [layer], ("image_to_text",)) as used:
                transformer(**inputs)
    p = stock.tensor("image_to_text")[:, 0]
    expected = torch.stack([p[0][..., permutations[2]], p[1][..., permutations[1]]])  # batch row 0 = registered 2
    torch.testing.assert_close(used.tensor("image_to_text")[:, 0], 0.5 * p + 0.5 * expected, atol=1e-6, rtol=1e-5)
    assert perturbation.calls == 1 and perturbation.l1 > 0
    with pytest.raises(ValueError, match="match none of the 3 registered prompts"):
        with torch.no_grad(), perturb_attention(transformer, layer, "word_shuffle", words=words):
            transformer(**(inputs | {"encoder_hidden_states": text + 1.0}))
    assert not interventions_on(joint_attention_modules(transformer)[layer])


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


def test_the_shape_reader_reads_the_colour_shape_dataset(tmp_path):
    DESIGN = "colour_shape"  # noqa: N806
    from seg4diff.config import ShapesParams
    from seg4diff.data.shapes import generate_split

    path = generate_split(
        tmp_path,
        "test",
        60,
        ShapesParams(image_size=64, seed=3, num_train=1, num_val=1, num_test=60, design=DESIGN),
    )
    dataset = json.loads(path.read_text())
    recalls = {64: [], 32: []}
    for info in dataset["images"]:
        image = Image.open(tmp_path / "images/test" / info["file_name"]).convert("RGB")
        for size in recalls:
            small = np.asarray(image.resize((size, size), Image.Resampling.BICUBIC)) / 255
            recalls[size].append(object_recall(small, info["caption"], DESIGN))
    assert np.mean(recalls[64]) >= 0.95 and np.mean(recalls[32]) >= 0.88  # measured: 0.98 and 0.93 on 200 test images
    yy, xx = np.mgrid[:40, :40]
    assert blob_shape((yy - 20) ** 2 + (xx - 20) ** 2 <= 12**2, "colour_shape") == "circle"
    assert blob_shape((abs(yy - 20) + abs(xx - 20)) <= 12, "colour_shape") == "square"  # a square turned 45°
    assert blob_shape((yy >= 8) & (abs(xx - 20) <= (yy - 8) * 0.577), "colour_shape") == "triangle"
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
    layers = [0, len(backbone.transformer.transformer_blocks)]  # the first double-stream and first single-stream layer
    settings = CausalParams(
        perturbations=["word_shuffle", "mean"],  # word_shuffle: the FLUX pipeline's own prompt rows are matched
        blur_sigma=1.0,
        permutations=2,
        doses=[1.0],
        calibration_samples=2,
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
    assert len(flow) == 2 * 2 * 2 and np.isfinite(flow.delta).all()  # layers × kinds × (full, dose 1)
    assert (flow.delta.abs() > 0).all()  # every run changed the loss
    assert set(examples) == {"baseline", *((b, k) for b in layers for k in ("word_shuffle", "mean"))}
    assert set(table.comparison) == {"vs_unperturbed"}  # no expert given: no contrast


@pytest.fixture(scope="module")
def organism(tmp_path_factory):
    """A tiny random organism (3 layers, 8×8 tokens) and a prepared val split of 4 Shapes images at 16²."""
    from conftest import prepared_shapes

    from seg4diff.backbones.backbone import load_backbone
    from seg4diff.config import ModelParams
    from seg4diff.data.prepared import open_prepared
    from seg4diff.data.shapes_vocabulary import CLASS_NAMES
    from seg4diff.organism.pipeline import Architecture, OrganismPipeline

    root = prepared_shapes(tmp_path_factory.mktemp("causal"), ["val"], 16, 16, seed=2, num_val=4)
    words = sorted({w for n in CLASS_NAMES for w in n.split()} | {"and", "background"})
    arch = Architecture(
        num_layers=3, num_attention_heads=2, attention_head_dim=8, image_size=16, text_length=10, text_layers=0,
        pooled="none",
    )  # fmt: skip
    OrganismPipeline.build(words, arch, seed=0).save_pretrained(root / "organism")
    return load_backbone(ModelParams(path=str(root / "organism"))), open_prepared(root / "val.zarr")


def _organism_settings(**overrides):
    from seg4diff.config import CausalParams

    settings = dict(
        perturbations=["mean", "word_shuffle"],
        permutations=2,
        doses=[0.5, 1.0],
        calibration_samples=3,
        captions=3,
        batch_size=2,  # two batches: the noise is seeded per batch
        generation_steps=2,
        flow_samples=3,
        flow_sigmas=[0.5],
        bootstrap_resamples=400,
    )
    return CausalParams(**(settings | overrides))


def test_the_calibrated_alpha_reaches_the_target_l1_on_the_recorded_generation(organism):
    from seg4diff.evaluation.causal import (
        Perturbations,
        calibrated_alpha,
        calibration_l1,
        recorded_forwards,
        word_shuffles,
    )

    backbone, prepared = organism
    captions = [str(c) for c in prepared["caption"].values[:2]]
    settings = _organism_settings()
    forwards = recorded_forwards(backbone, captions, settings, 16)
    assert len(forwards) == 2 * 2  # steps × (conditional, unconditional)
    perturbation = Perturbations(backbone.transformer, settings, word_shuffles(backbone, [*captions, ""], settings))
    for kind in ("blur", "mean", "word_shuffle"):
        full = {layer: calibration_l1(backbone, forwards, perturbation(layer, kind, 0, 1.0)) for layer in (0, 2)}
        target = 0.5 * min(full.values())
        for layer in (0, 2):
            alpha = calibrated_alpha(target, full[layer])
            assert 0 < alpha <= 0.5 + 1e-9
            reached = calibration_l1(backbone, forwards, perturbation(layer, kind, 0, alpha))
            assert reached == pytest.approx(target, rel=1e-4)  # on fixed inputs the size is linear in α
    assert calibrated_alpha(2.0, 1.0) == 1.0  # out of reach: the full perturbation


def test_the_causal_table_on_the_organism_has_doses_corrected_intervals_and_the_expert_contrast(organism):
    from seg4diff.evaluation.causal import causal_table
    from seg4diff.evaluation.causal_table import COLUMNS, causal_summary
    from seg4diff.prompts import PromptStyle

    backbone, prepared = organism
    captions = [str(c) for c in prepared["caption"].values[:3]]
    settings = _organism_settings()
    style = PromptStyle("gt_classes", " and ", "threshold", "all")
    table, _ = causal_table(backbone, captions, prepared, style, settings, [0, 1, 2], progress=False, expert_layer=1)
    assert list(table.columns) == COLUMNS
    assert {"caption_colour_agreement", "object_recall", "shape_recall", "colour_recall"} <= set(table.metric)
    per_layer = table[table.comparison == "vs_unperturbed"]
    assert set(per_layer.dose) == {"full", "0.5", "1"} and len(per_layer) == 3 * 2 * 3 * 6  # layers×kinds×doses×metrics
    sizes = per_layer[per_layer.metric == "perturbation_l1"]
    assert (sizes.value > 0).all() and (sizes[sizes.dose == "full"].alpha == 1).all()
    for (kind, dose), group in sizes[sizes.dose != "full"].groupby(["perturbation", "dose"]):
        assert (group.alpha <= 1).all() and group.target_l1.nunique() == 1  # one target for every layer
        full = sizes[(sizes.perturbation == kind) & (sizes.dose == "full")].calibration_l1
        assert group.target_l1.iloc[0] <= float(dose) * full.min() + 1e-12  # of the weakest layer and draw
        if kind == "mean":  # one draw: exactly the weakest layer's
            assert group.target_l1.iloc[0] == pytest.approx(float(dose) * full.min())
        np.testing.assert_allclose(group.calibration_l1, group.target_l1, rtol=1e-6)  # every layer reaches it
    tested = table[table.metric != "perturbation_l1"]
    assert (tested.p_holm >= tested.p_value - 1e-12).all() and tested.p_value.between(0, 1).all()
    assert (tested.ci_low_bonferroni <= tested.ci_low + 1e-12).all()
    assert (tested.ci_high <= tested.ci_high_bonferroni + 1e-12).all()
    contrast = table[table.comparison == "expert_vs_other_layers"]
    assert len(contrast) == 2 * 3 * 5 and (contrast.layer == 1).all()  # kinds × doses × metrics
    row = contrast[(contrast.perturbation == "mean") & (contrast.dose == "1") & (contrast.metric == "object_recall")]
    layer_rows = per_layer[
        (per_layer.perturbation == "mean") & (per_layer.dose == "1") & (per_layer.metric == "object_recall")
    ]
    effects = layer_rows.delta.to_numpy()  # each layer's mean effect (every caption names objects: no NaN)
    assert row.delta.iloc[0] == pytest.approx(effects[1] - (effects[0] + effects[2]) / 2, abs=1e-9)
    summary = causal_summary(table, 1, settings.primary_contrast)
    primary = summary["primary_contrast"]
    assert (primary["perturbation"], primary["dose"], primary["metric"]) == ("word_shuffle", "1", "object_recall")
    assert "word_shuffle.dose_0.5.shape_recall" in summary and summary["mean.object_recall"]["layers"] == 3


def test_an_interrupted_causal_run_resumes_from_its_work_folder_with_the_same_table(organism, tmp_path, monkeypatch):

    import seg4diff.evaluation.causal as causal
    from seg4diff.evaluation.run_cache import RunCache
    from seg4diff.prompts import PromptStyle

    backbone, prepared = organism
    captions = [str(c) for c in prepared["caption"].values[:3]]
    settings = _organism_settings(perturbations=["blur", "word_shuffle"], doses=[1.0])
    style = PromptStyle("gt_classes", " and ", "threshold", "all")
    run = lambda cache: causal.causal_table(  # noqa: E731
        backbone, captions, prepared, style, settings, [0, 2], progress=False, expert_layer=2, cache=cache
    )
    reference, _ = run(None)
    measured, real = [], causal._measure

    def interrupted(*args):
        if len(measured) == 4:  # baseline, then three perturbed generations: the session ends here
            raise KeyboardInterrupt
        measured.append(args[-1] if len(args) > 8 else None)
        return real(*args)

    monkeypatch.setattr(causal, "_measure", interrupted)
    work = tmp_path / "causal-work"
    with pytest.raises(KeyboardInterrupt):
        run(RunCache(work, json.dumps({"run": 1})))
    done = sorted(p.name for p in work.glob("*.npz"))
    assert done == ["baseline.npz", "calibration.npz", "run-0-blur-1.npz", "run-0-blur-full.npz"]
    assert not list(work.glob(".tmp-*"))  # no half-written part
    measured.clear()
    monkeypatch.setattr(causal, "_measure", lambda *args: measured.append(1) or real(*args))
    resumed, examples = run(RunCache(work, json.dumps({"run": 1})))
    # 2 layers × 2 kinds × 2 doses, word_shuffle 2 draws: 12 generations; the two finished runs are not redone, the
    # interrupted one (word_shuffle at layer 0, one of its draws generated) is
    assert len(measured) == 12 - 2
    pd.testing.assert_frame_equal(resumed, reference)
    assert examples[(0, "blur")].shape[0] == 3  # the saved examples come back too
    measured.clear()
    again, _ = run(RunCache(work, json.dumps({"run": 1})))  # all done: nothing generated
    assert measured == [] and again.equals(reference)
    said = RunCache(work, json.dumps({"run": 2}))  # other settings: the finished parts are moved aside, not used
    assert said.get("baseline") is None and len(list(work.glob("previous-*/run-*.npz"))) == 8


def test_a_damaged_part_of_a_saved_causal_run_is_refused_naming_its_file(tmp_path):
    from seg4diff.errors import ConfigError, DataError
    from seg4diff.evaluation.run_cache import RunCache

    cache = RunCache(tmp_path / "work", json.dumps({"a": 1}))
    cache.put("run-0-blur-full", {"alpha": np.float64(0.5), "images": np.zeros((2, 4, 4, 3), np.uint8)})
    assert float(cache.get("run-0-blur-full")["alpha"]) == 0.5 and cache.get("run-1-blur-full") is None
    (tmp_path / "work" / "run-0-blur-full.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match=r"run-0-blur-full\.npz: an unreadable part .* delete it"):
        cache.get("run-0-blur-full")
    with pytest.raises(ValueError, match="name"):
        cache.put("../escape", {})
    user = tmp_path / "mine"
    (user / "thesis").mkdir(parents=True)
    with pytest.raises(ConfigError, match="causal.work_dir"):
        RunCache(user, "{}")
    assert (user / "thesis").is_dir()
