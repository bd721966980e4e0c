"""The GPU benchmark's code paths run on CPU at toy sizes, and its exactness check holds there."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_runs_on_cpu_at_toy_sizes():
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu.py", "--device", "cpu", "--small"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    errors = [float(e) for e in re.findall(r"max_abs_err=(\S+)", result.stdout)]
    assert len(errors) == 2 and max(errors) < 1e-6, result.stdout
    ratios = re.findall(r"ratio=(\d+\.\d+)", result.stdout)
    assert len(ratios) == 5 + 4 + 4, result.stdout  # SD3 batch 1 (with naive), SD3 batch 2, FLUX


def _grounding_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import organism_grounding

    return organism_grounding


def test_the_colour_rule_reads_colour_words_in_colour_shape_and_only_groups_colours_in_shape():
    import numpy as np

    from seg4diff.data.shapes_vocabulary import COLOURS, SHAPE_PALETTE

    rule = _grounding_module().colour_rule_masks
    image = np.full((8, 8, 3), 0.5)
    image[:2, :2] = np.array(COLOURS["blue"]) / 255  # 4 pixels
    image[4:8, 4:8] = np.array(COLOURS["red"]) / 255  # 16 pixels
    names = ["background", "red circle", "blue square"]
    masks = rule(image, [1, 2], names, "colour_shape")  # the class names say their colours
    assert masks[0].sum() == 16 and masks[0][4:, 4:].all() and masks[1].sum() == 4 and masks[1][:2, :2].all()
    shape = np.full((8, 8, 3), 0.5)
    shape[:2, :2] = np.array(SHAPE_PALETTE["cyan"]) / 255
    shape[4:8, 4:8] = np.array(SHAPE_PALETTE["purple"]) / 255
    masks = rule(shape, [3, 5], ["background", "circle", "square", "triangle", "star", "cross", "ring"], "shape")
    # no colour names a class: the larger colour group goes to the first prompted class, the next to the second
    assert masks[0].sum() == 16 and masks[0][4:, 4:].all() and masks[1].sum() == 4
    one = rule(shape, [4], ["background", "circle", "square", "triangle", "star", "cross", "ring"], "shape")
    assert one[0].sum() == 20  # one prompted class: all that is saturated (figure–ground)
    assert not rule(np.full((8, 8, 3), 0.5), [4], names * 3, "shape").any()  # grey: nothing


def test_grounding_picks_readings_on_val_and_indexes_the_same_cell_on_test():
    import numpy as np

    g = _grounding_module()
    val = np.zeros((2, 3, 4, 3, 2), np.int64)  # (threshold, sample, layer, 3, C)
    val[..., 1, :] = 10  # label area
    val[..., 2, :] = 10  # prediction area
    val[1, :, 2, 0, :] = 9  # threshold 1, layer 2: 9 of 10 right
    val[0, :, 1, 0, :] = 5
    assert g._best(val) == (1, 2)
    test = np.arange(2 * 3 * 4 * 3 * 2).reshape(2, 3, 4, 3, 2)
    assert (g._pick(test, (1, 2)) == test[1, :, 2]).all() and g._pick(test, (1, 2)).shape == (3, 3, 2)


def test_the_grounding_benchmarks_readings_equal_the_score_stages_at_every_threshold():
    import numpy as np
    import xarray as xr

    from seg4diff.evaluation.scoring import score_store

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from scale import synthetic

    store, labels = synthetic(6, 5, 3, 1)
    store = store.load()
    n = labels.sizes["sample"]
    data = xr.Dataset(
        {
            "label": labels,
            "label_height": ("sample", np.full(n, labels.sizes["label_y"])),
            "label_width": ("sample", np.full(n, labels.sizes["label_x"])),
            "class_name": ("class", [f"c{k}" for k in range(5)]),
        }
    )
    thresholds = [0.1, 0.4]
    stats = _grounding_module().attention_statistics(store, data, thresholds)
    assert stats["block"].shape == (2, n, 3, 1, 3, 5) and stats["blocks mean"].shape == (2, n, 1, 3, 5)
    for t, threshold in enumerate(thresholds):
        tables = score_store(store, labels, 5, threshold, progress=False)
        np.testing.assert_array_equal(stats["block"][t], tables.per_sample[:, 0])
        np.testing.assert_array_equal(stats["blocks mean"][t].sum(0), tables.layer_mean[0])
    assert not np.array_equal(stats["block"][0], stats["block"][1])  # the threshold matters


def test_seed_means_average_every_reading_difference_and_generation_recall_over_seeds():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from organism_seeds import seed_means

    def seed(miou: float, delta: float, recall: float, block: int) -> dict:
        return {
            "readings": {"expert": {"test_miou": miou, "block": block}, "colour rule": {"test_miou": 0.5}},
            "expert_minus": {"colour rule": {"delta": delta}},
            "generation": {"shape_recall": recall},
        }

    means = seed_means({0: seed(0.3, -0.2, 0.4, 5), 1: seed(0.5, 0.0, 0.6, 2)})
    assert means["expert.test_miou"] == {"mean": 0.4, "values": [0.3, 0.5]}
    assert means["colour rule.test_miou"]["mean"] == 0.5
    assert means["expert_minus.colour rule"]["mean"] == -0.1 and means["generation.shape_recall"]["mean"] == 0.5
    assert means["expert_blocks"] == [5, 2]
