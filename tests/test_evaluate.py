from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import base_params, prepared_shapes

from seg4diff.backbones.backbone import load_backbone
from seg4diff.config import ModelParams
from seg4diff.data.prepared import label_sizes, open_prepared, prepared_split
from seg4diff.data.sample import IGNORE_INDEX
from seg4diff.data.shapes_vocabulary import CLASS_NAMES
from seg4diff.evaluation.protocols import evaluate_segmentation, vocabulary_predictions, vocabulary_prompts
from seg4diff.organism.pipeline import Architecture, OrganismPipeline
from seg4diff.prompts import PromptStyle
from seg4diff.segmentation import zero_shot
from seg4diff.segmentation.zero_shot import (
    Readout,
    choose_predictor,
    choose_reading,
    reading_candidates,
    segment_batch,
)
from tasks.evaluate import reading_metrics

WORDS = sorted({w for n in CLASS_NAMES for w in n.split()} | {"and", "background"})


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    root = prepared_shapes(tmp_path_factory.mktemp("ev"), ["test"], 16, 32, seed=4, num_test=4)
    for length in (8, 40):
        arch = Architecture(
            num_layers=2,
            num_attention_heads=2,
            attention_head_dim=8,
            image_size=16,
            text_length=length,
            text_layers=0,
            pooled="mean",
        )
        OrganismPipeline.build(WORDS, arch, seed=0).save_pretrained(root / f"organism{length}")
    return root


def test_vocabulary_split_over_prompts_covers_every_class_once(test_split):
    short = load_backbone(ModelParams(path=str(test_split / "organism8")))
    names = ["background", *CLASS_NAMES]
    prompts = vocabulary_prompts(short, names, PromptStyle("gt_classes", " and ", "word", "all"))
    assert len(prompts) > 1
    covered = [s.class_id for _, spans in prompts for s in spans]
    assert sorted(covered) == list(range(13))
    for prompt, _ in prompts:
        assert len(prompt.split()) <= 8  # every prompt fits the 8-token text encoder
    without_background = vocabulary_prompts(short, names, PromptStyle("gt_classes", " and ", "threshold", "all"))
    assert sorted(s.class_id for _, spans in without_background for s in spans) == list(range(1, 13))


def test_vocabulary_classes_of_every_prompt_share_one_normalisation(test_split):
    """Several prompts: every token's probability renormalised over the keys of ALL the prompts' forwards, per head and
    pixel — the denominators recovered here from captured probabilities and logits (log-sum-exp = logit − log p)."""
    import torch
    import torch.nn.functional as F

    from seg4diff.backbones.noise import sample_noise
    from seg4diff.capture.attention import capture_attention
    from seg4diff.prompts import token_slots

    short = load_backbone(ModelParams(path=str(test_split / "organism8")))
    rows = open_prepared(test_split / "test.zarr").isel(sample=[0, 1]).load()
    names = [str(n) for n in rows.class_name.values]
    style = PromptStyle("gt_classes", " and ", "word", "all")
    prompts = vocabulary_prompts(short, names, style)
    assert len(prompts) > 1
    predictions = vocabulary_predictions(short, rows, [0, 1], Readout(1, 0.5, 0, style, None), prompts)
    images = torch.from_numpy(rows.image.values).permute(0, 3, 1, 2).float() / 255
    latents = short.encode_images(images)
    noisy = 0.5 * torch.stack([sample_noise(latents.shape[1:], 0, i) for i in (0, 1)]) + 0.5 * latents
    forwards = []
    for prompt, spans in prompts:
        encoding = short.encode_prompts([prompt] * 2)
        slot = token_slots(encoding, 0, spans, "class", len(encoding.tokens[0]), prompt, "all")
        captured = {}
        for output in ("logits", "probabilities"):
            with torch.no_grad(), capture_attention(short.transformer, [1], ("image_to_text",), output=output) as cap:
                short.transformer(**short.transformer_inputs(noisy, 0.5, encoding))
            captured[output] = cap.tensor("image_to_text")[:, 0].double()  # (batch, head, image token, text position)
        lse = (captured["logits"] - captured["probabilities"].log())[..., 0]  # the same for every key of a row
        forwards.append((slot, spans, captured["logits"], lse))
    joint = torch.logsumexp(torch.stack([lse for *_, lse in forwards]), 0)
    per_class = {}
    for slot, spans, logits, _ in forwards:
        probabilities = torch.exp(logits - joint[..., None]).mean(1)  # head mean
        for span in spans:
            positions = [int(p) for p, c in zip(slot.position, slot.class_id) if c == span.class_id and p >= 0]
            per_class[span.class_id] = probabilities[..., positions].mean(-1).reshape(2, 8, 8)
    classes = sorted(per_class)
    stacked = torch.stack([per_class[c] for c in classes], 1).float()
    expected = np.array(classes)[
        F.interpolate(stacked, size=(32, 32), mode="bilinear", align_corners=False).argmax(1).numpy()
    ]
    assert (predictions == expected).mean() > 0.999  # float32 vs float64 rounding may flip an exact tie


def test_one_prompt_when_it_fits_gives_the_single_prompt_result(test_split):
    long = load_backbone(ModelParams(path=str(test_split / "organism40")))
    rows = open_prepared(test_split / "test.zarr").load()
    names = [str(n) for n in rows.class_name.values]
    style = PromptStyle("vocabulary", " and ", "word", "all")
    prompts = vocabulary_prompts(long, names, style)
    assert len(prompts) == 1
    merged = vocabulary_predictions(long, rows, [0, 1, 2, 3], Readout(1, 0.5, 0, style, None), prompts)
    direct = segment_batch(long, rows, [0, 1, 2, 3], Readout(1, 0.5, 0, style, None))
    assert (merged == direct).mean() > 0.999  # the same probabilities, head-averaged in another order


def test_evaluation_reports_every_protocol(test_split):
    backbone = load_backbone(ModelParams(path=str(test_split / "organism8")))
    readout = Readout(1, 0.5, 0, PromptStyle("gt_classes", " and ", "threshold", "all"), 0.3)
    results, gallery = evaluate_segmentation(
        backbone, open_prepared(test_split / "test.zarr"), readout, 2, 0.1, progress=False
    )
    assert set(results) == {"gt_classes", "vocabulary", "unsupervised_per_image_matching"}
    for result in results.values():
        assert 0 <= result["miou"] <= 1 and 0 <= result["pacc"] <= 1 and result["stats"].shape == (4, 3, 13)
    for protocol in ("gt_classes", "vocabulary"):  # per-image statistics add up to the dataset confusion's numbers
        tp, labelled, predicted = results[protocol]["stats"].sum(0)
        assert results[protocol]["pacc"] == pytest.approx(tp.sum() / labelled.sum())
    assert sum(results["vocabulary"]["predicted_pixels"].values()) == 4 * 32 * 32
    assert set(results["vocabulary"]["never_predicted"]) == {
        n for n, c in results["vocabulary"]["predicted_pixels"].items() if c == 0
    }
    assert results["vocabulary"]["prompts"] > 1 and sorted(gallery) == [0, 1, 2, 3] and gallery[0].shape == (32, 32)


@pytest.fixture(scope="module")
def evaluate_params(test_split, tmp_path_factory):
    """Params whose val and test splits are small prepared Shapes stores, read by the organism with an 8-token encoder,
    and whose expert is its layer 1 at σ 0.5 (no adapter: the base model only)."""
    import json

    from seg4diff.config import parse_params
    from seg4diff.data.prepared import preparation_settings

    root = tmp_path_factory.mktemp("reading")
    raw = base_params(root)
    raw["model"]["path"] = str(test_split / "organism8")
    raw["prepare"] |= {"resolution": 16, "label_resolution": 32}
    raw["select"] = {"output": str(root / "expert.json")}
    raw["finetune"] = {"output": str(root / "no_adapter")}
    raw["evaluate"] = {"batch_size": 2, "val_samples": 4, "kl_thresholds": [0.1], "generation_samples": 0}
    params = parse_params(raw)
    settings = preparation_settings(params.data, params.prepare)  # read back as these settings' prepared splits
    prepared_shapes(
        Path(params.prepare.output), ["val", "test"], 16, 32, seed=5, settings=settings, num_val=4, num_test=3
    )
    expert = {"layer": 1, "sigma": 0.5, "miou": 0.5, "direction": "image_to_text", "rule": "best"}
    Path(params.select.output).write_text(json.dumps(expert))
    return params


def _staircase_maps(backbone, rows, sample_indices, readout):
    """Synthetic class maps at label size whose best background threshold is 0.3: each present object's map is 1 on
    its even columns and 0.35 on its odd ones, every map 0.25 on background (≤ 0.2 paints background with a class,
    ≥ 0.4 loses the odd columns to background; the `logit` rule, ½ on a sigmoid, keeps every pixel an object)."""
    per_image = []
    for k, (height, width) in enumerate(label_sizes(rows)):
        label = rows["label"].values[k][:height, :width]
        prompted = np.array([c for c in np.unique(label) if c not in (0, IGNORE_INDEX)])
        odd = (np.arange(width) % 2 == 1)[None]
        maps = np.stack([np.where(label == c, np.where(odd, 0.35, 1.0), 0.25) for c in prompted]).astype(np.float32)
        per_image.append((maps, prompted))
    return per_image


def test_reading_chosen_on_val_is_the_argmax_of_val_miou_over_the_candidates(evaluate_params, monkeypatch):
    monkeypatch.setattr(zero_shot, "prompted_class_maps", _staircase_maps)
    val = prepared_split(evaluate_params, "val")
    readout = Readout(1, 0.5, 0, PromptStyle("gt_classes", " and ", "threshold", "all"), 0.2)
    thresholds = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5]
    chosen, curve = choose_reading(None, val, readout, 2, ["probability", "logit"], thresholds)
    assert [(c.predictor, c.background_threshold) for c in curve] == [("probability", t) for t in thresholds] + [
        ("logit", 0.2)
    ]
    assert chosen == max(curve, key=curve.get)
    assert (chosen.predictor, chosen.background_threshold) == ("probability", 0.3)
    assert curve[chosen] == 1.0 and all(m < 1.0 for c, m in curve.items() if c != chosen)
    metrics = reading_metrics(chosen, curve)
    assert metrics["background_threshold"] == 0.3 and "val_miou" not in metrics
    labels = [f"probability {t:g}" for t in thresholds] + ["logit"]
    assert (
        metrics["val_miou_by_reading"] == dict(zip(labels, curve.values()))
        and metrics["val_miou_by_reading"]["probability 0.3"] == 1.0
    )
    worded = replace(readout, background_threshold=None)  # background a prompted word: no threshold to choose
    assert [c.background_threshold for c in reading_candidates(worded, ["probability"], thresholds)] == [None]
    assert "background_threshold" not in reading_metrics(worded, {worded: 0.5})


def test_test_labels_never_choose_the_reading_and_the_fixed_threshold_reproduces_todays_numbers(
    evaluate_params, monkeypatch
):
    """The organism read for real: relabelling the test split changes the test scores, not the reading chosen on val;
    the single candidate 0.2 (prompt.background_threshold) gives exactly the numbers of no choice at all."""
    from tasks import evaluate as evaluate_task

    def run(thresholds, relabel=False, predictors=("probability", "logit")):
        update = {"background_thresholds": thresholds, "predictors": list(predictors)}
        params = evaluate_params.model_copy(update={"evaluate": evaluate_params.evaluate.model_copy(update=update)})

        def split(params, name):
            dataset = prepared_split(params, name)
            if relabel and name == params.evaluate.split:  # every labelled pixel moved to the next class
                label = dataset["label"].values
                moved = np.where(label == IGNORE_INDEX, label, (label.astype(np.int64) + 1) % dataset.sizes["class"])
                dataset = dataset.assign(label=(dataset["label"].dims, moved.astype(label.dtype)))
            return dataset

        monkeypatch.setattr(evaluate_task, "prepared_split", split)
        return evaluate_task._evaluate_model(params, "base")["segmentation"]

    chosen = run([0.05, 0.2, 0.5], predictors=["probability"])
    relabelled = run([0.05, 0.2, 0.5], relabel=True, predictors=["probability"])
    reading = ("predictor", "background_threshold", "val_miou_by_reading")
    assert {k: chosen["gt_classes"][k] for k in reading} == {k: relabelled["gt_classes"][k] for k in reading}
    assert relabelled["gt_classes"]["miou"] != chosen["gt_classes"]["miou"]
    fixed, unchosen = run([0.2]), run(None)
    assert fixed["gt_classes"]["predictor"] == unchosen["gt_classes"]["predictor"]
    assert fixed["gt_classes"]["background_threshold"] == unchosen["gt_classes"]["background_threshold"]
    assert [k for k in fixed["gt_classes"]["val_miou_by_reading"] if k.startswith("probability")] == ["probability 0.2"]
    for protocol in ("gt_classes", "vocabulary", "unsupervised_per_image_matching"):
        assert fixed[protocol]["miou"] == unchosen[protocol]["miou"]
        np.testing.assert_array_equal(fixed[protocol]["stats"], unchosen[protocol]["stats"])
    # today's numbers: the readout at prompt.background_threshold with the predictor chosen on val, as before
    readout = Readout.for_expert({"layer": 1, "sigma": 0.5}, evaluate_params.prompt, evaluate_params.evaluate.seed)
    backbone = load_backbone(evaluate_params.model)
    val, test = prepared_split(evaluate_params, "val"), prepared_split(evaluate_params, "test")
    predictor, by_predictor = choose_predictor(backbone, val, readout, 2, ["probability", "logit"], 4)
    today, _ = evaluate_segmentation(backbone, test, replace(readout, predictor=predictor), 2, 0.1, progress=False)
    assert fixed["gt_classes"]["predictor"] == predictor
    assert fixed["gt_classes"]["val_miou_by_reading"] == {
        ("logit" if p == "logit" else "probability 0.2"): m for p, m in by_predictor.items()
    }
    for protocol in ("gt_classes", "vocabulary"):
        np.testing.assert_array_equal(fixed[protocol]["stats"], today[protocol]["stats"])


def test_the_chosen_threshold_is_shown_next_to_the_chosen_predictor():
    from flows.evaluate import reading_rows
    from seg4diff.evaluation.comparison import comparison_rows

    def variant(predictor, threshold):
        protocol = {"miou": 0.5, "macc": 0.5, "pacc": 0.5, "miou_ci": [0.4, 0.6]}
        gt_classes = protocol | {"predictor": predictor, "background_threshold": threshold}
        return {"gt_classes": gt_classes, "vocabulary": protocol, "unsupervised_per_image_matching": protocol} | {
            "fidelity": {}
        }

    metrics = {"base": variant("probability", 0.15), "finetuned": variant("logit", None)}
    rows = reading_rows(comparison_rows(metrics, ["base", "finetuned"]), metrics, ["base", "finetuned"])
    at = [r["metric"] for r in rows].index("predictor (chosen on val)")
    assert rows[at + 1]["metric"] == "background threshold × peak (chosen on val)"
    assert (rows[at + 1]["base"], rows[at + 1]["finetuned"]) == ("0.15", "sigmoid ½")
    worded = {
        v: m | {"gt_classes": {k: x for k, x in m["gt_classes"].items() if k != "background_threshold"}}
        for v, m in metrics.items()
    }
    assert reading_rows(comparison_rows(worded, ["base"]), worded, ["base"]) == comparison_rows(worded, ["base"])
