import numpy as np
import pytest
from conftest import prepared_shapes

from seg4diff.backbones.backbone import load_backbone
from seg4diff.config import ModelParams
from seg4diff.data.prepared import open_prepared
from seg4diff.data.shapes_vocabulary import CLASS_NAMES
from seg4diff.evaluation.protocols import evaluate_segmentation, vocabulary_predictions, vocabulary_prompts
from seg4diff.organism.pipeline import Architecture, OrganismPipeline
from seg4diff.prompts import PromptStyle
from seg4diff.segmentation.zero_shot import Readout, segment_batch

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
