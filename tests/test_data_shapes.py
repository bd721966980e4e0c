import json

import numpy as np

from seg4diff.config import PrepareParams, ShapesParams
from seg4diff.data.coco import CocoSource
from seg4diff.data.prepare import prepare_split
from seg4diff.data.prepared import open_prepared
from seg4diff.data.shapes import generate_shapes
from seg4diff.data.shapes_vocabulary import CLASS_NAMES, COLOURS


def _shapes(root, **kw):
    params = ShapesParams(**{"image_size": 48, "num_train": 40, "num_val": 5, "num_test": 5, "seed": 1, **kw})
    generate_shapes(root, params, ["train"])
    return CocoSource(root, {"train": ("annotations/train.json", "images/train")}, background=True)


def test_generation_is_deterministic(tmp_path):
    a, b = _shapes(tmp_path / "a"), _shapes(tmp_path / "b")
    assert (tmp_path / "a/annotations/train.json").read_text() == (tmp_path / "b/annotations/train.json").read_text()
    for i in ("0", "7", "39"):
        np.testing.assert_array_equal(a.load("train", i).image, b.load("train", i).image)
    assert (tmp_path / "a/annotations/train.json").read_text() != _read(_shapes(tmp_path / "c", seed=2))


def _read(source):
    return (source.root / "annotations/train.json").read_text()


def test_captions_name_exactly_the_visible_distinct_classes(tmp_path):
    source = _shapes(tmp_path)
    assert source.class_names == ["background", *CLASS_NAMES] and len(CLASS_NAMES) == 12
    shared = 0
    for i in source.sample_ids("train"):
        sample = source.load("train", i)
        phrases = sample.caption.split(" and ")
        assert phrases.count("background") == 1  # named once, anywhere
        phrases.remove("background")
        assert 1 <= len(phrases) <= 3 and len(set(phrases)) == len(phrases)
        present = {source.class_names[k] for k in np.unique(sample.label) if k != 0}
        assert present == set(phrases)
        colours, shapes = [p.split()[0] for p in phrases], [p.split()[1] for p in phrases]
        shared += len(set(colours)) < len(colours) or len(set(shapes)) < len(shapes)
        for k in np.unique(sample.label)[1:]:  # pixels carry their class's colour
            mean = sample.image[sample.label == k].mean(axis=0)
            expected = np.array(COLOURS[source.class_names[k].split()[0]])
            assert np.abs(mean - expected).max() < 0.2 * 255
    assert shared >= 10  # many images have objects sharing a colour or a shape


def test_rle_and_polygon_formats_give_the_same_labels(tmp_path):
    poly, rle = _shapes(tmp_path / "p"), _shapes(tmp_path / "r", mask_format="rle")
    assert isinstance(json.loads(_read(rle))["annotations"][0]["segmentation"], dict)
    for i in ("0", "5"):
        np.testing.assert_array_equal(poly.load("train", i).label, rle.load("train", i).label)


class Interrupting:
    """A source that raises KeyboardInterrupt at the n-th load, as a kill would."""

    def __init__(self, source, at):
        self.source, self.at, self.calls = source, at, 0
        self.class_names, self.has_background = source.class_names, source.has_background

    def sample_ids(self, split):
        return self.source.sample_ids(split)

    def load(self, split, sample_id):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.source.load(split, sample_id)


def test_interrupted_prepare_leaves_nothing_finished_and_rerun_is_identical(tmp_path):
    params = PrepareParams(resolution=32, label_resolution=48, output=str(tmp_path))
    source = _shapes(
        tmp_path / "raw", num_train=100
    )  # more than one write batch (64), so a batch lands before the kill
    prepare_split(source, "train", tmp_path / "ref.zarr", params, progress=False)
    target = tmp_path / "train.zarr"
    try:
        prepare_split(Interrupting(source, at=80), "train", target, params, progress=False)
    except KeyboardInterrupt:
        pass
    assert not target.exists() and (tmp_path / "train.zarr.tmp").exists()
    prepare_split(source, "train", target, params, progress=False)
    assert not (tmp_path / "train.zarr.tmp").exists()
    ref, got = open_prepared(tmp_path / "ref.zarr").load(), open_prepared(target).load()
    assert got.identical(ref) and got.sizes["sample"] == 100
