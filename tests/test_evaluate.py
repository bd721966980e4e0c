import numpy as np
import pytest

from seg4diff.config import ModelParams
from seg4diff.data.prepared import open_prepared
from seg4diff.data.shapes import CLASS_NAMES
from seg4diff.evaluate import evaluate_segmentation, vocabulary_predictions, vocabulary_prompts
from seg4diff.extract import PromptStyle
from seg4diff.models import load_backbone
from seg4diff.organism import Architecture, OrganismPipeline
from seg4diff.segment import segment_batch
from conftest import prepared_shapes

WORDS = sorted({w for n in CLASS_NAMES for w in n.split()} | {"and", "background"})


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    root = prepared_shapes(tmp_path_factory.mktemp("ev"), ["test"], 16, 32, seed=4, num_test=4)
    for length in (8, 40):
        arch = Architecture(num_layers=2, num_attention_heads=2, attention_head_dim=8, image_size=16, text_length=length,
                            text_layers=0, pooled="mean")
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


def test_one_prompt_when_it_fits_gives_the_single_prompt_result(test_split):
    long = load_backbone(ModelParams(path=str(test_split / "organism40")))
    rows = open_prepared(test_split / "test.zarr").load()
    names = [str(n) for n in rows.class_name.values]
    style = PromptStyle("vocabulary", " and ", "word", "all")
    prompts = vocabulary_prompts(long, names, style)
    assert len(prompts) == 1
    merged = vocabulary_predictions(long, rows, [0, 1, 2, 3], 1, 0.5, 0, prompts, None, "all")
    direct = segment_batch(long, rows, [0, 1, 2, 3], 1, 0.5, 0, style, None)
    np.testing.assert_array_equal(merged, direct)


def test_evaluation_reports_every_protocol(test_split):
    backbone = load_backbone(ModelParams(path=str(test_split / "organism8")))
    results, gallery = evaluate_segmentation(backbone, open_prepared(test_split / "test.zarr"), 1, 0.5, 0, 2, 0.1,
                                             PromptStyle("gt_classes", " and ", "threshold", "all"), 0.3, progress=False)
    assert set(results) == {"gt_classes", "vocabulary", "unsupervised_dataset_matching", "unsupervised_per_image_matching"}
    for result in results.values():
        assert 0 <= result["miou"] <= 1 and 0 <= result["pacc"] <= 1
    assert results["vocabulary"]["prompts"] > 1 and sorted(gallery) == [0, 1, 2, 3] and gallery[0].shape == (32, 32)
