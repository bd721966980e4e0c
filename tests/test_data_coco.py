import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from seg4diff.config import PrepareParams
from seg4diff.data.coco import CocoSource, load_coco
from seg4diff.data.prepare import prepare_split
from seg4diff.data.prepared import open_prepared
from seg4diff.data.sample import SampleError
from seg4diff.errors import DataError

H, W = 30, 40


def _rle(mask: np.ndarray, compressed: bool) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if compressed:
        return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    flat = mask.astype(np.uint8).ravel(order="F")  # uncompressed RLE: run lengths starting with zeros
    runs, current, length = [], 0, 0
    for value in flat:
        if value == current:
            length += 1
        else:
            runs.append(length)
            current, length = value, 1
    runs.append(length)
    return {"size": [H, W], "counts": runs}


def write_fixture(root: Path) -> None:
    """Image 1: overlapping polygons, an uncompressed and a compressed RLE, a crowd region. Then bad inputs."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(images_dir / "good.png")
    Image.fromarray(rgb[..., 0]).save(images_dir / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((H, W), 128, np.uint8)])).save(images_dir / "rgba.png")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(images_dir / "deep.png")
    (images_dir / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    Image.fromarray(rgb).save(root / "outside.png")

    rle_mask = np.zeros((H, W), bool)
    rle_mask[20:28, 30:38] = True
    crowd_mask = np.zeros((H, W), bool)
    crowd_mask[0:6, 0:10] = True
    big = [2, 2, 30, 2, 30, 25, 2, 25]  # 28x23 rectangle
    small = [10, 10, 20, 10, 20, 18, 10, 18]  # inside big: must stay on top
    names = [
        "good.png",
        "gray.png",
        "rgba.png",
        "deep.png",
        "corrupt.png",
        "missing.png",
        "../outside.png",
        "unknown_cat.png",
        "empty.png",
    ]
    images = [{"id": i + 1, "file_name": n, "height": H, "width": W} for i, n in enumerate(names)]
    for n in ("unknown_cat.png", "empty.png"):
        Image.fromarray(rgb).save(images_dir / n)
    anns = [
        {"image_id": 1, "category_id": 5, "segmentation": [small], "iscrowd": 0},
        {"image_id": 1, "category_id": 3, "segmentation": [big], "iscrowd": 0},
        {"image_id": 1, "category_id": 7, "segmentation": _rle(rle_mask, compressed=False), "iscrowd": 0},
        {"image_id": 1, "category_id": 3, "segmentation": _rle(crowd_mask, compressed=True), "iscrowd": 1},
        {"image_id": 2, "category_id": 5, "segmentation": [big], "iscrowd": 0},
        {"image_id": 8, "category_id": 99, "segmentation": [big], "iscrowd": 0},
        {"image_id": 9, "category_id": 5, "segmentation": [[5, 5, 10, 5, 15, 5]], "iscrowd": 0},  # degenerate: empty
        {"image_id": 9, "category_id": 7, "segmentation": [small], "iscrowd": 0},
    ]
    for i, ann in enumerate(anns, start=1):
        ann.update(id=i, area=0, bbox=[0, 0, 1, 1])
    categories = [{"id": 3, "name": "dog"}, {"id": 5, "name": "cat"}, {"id": 7, "name": "potted-plant"}]
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))


@pytest.fixture
def coco_root(tmp_path):
    write_fixture(tmp_path)
    return tmp_path


def test_label_map_equals_annToMask_composition(coco_root):
    source = CocoSource(coco_root, {"val": ("ann.json", "images")}, background=True)
    assert source.class_names == ["background", "dog", "cat", "potted-plant"]
    coco = load_coco(coco_root / "ann.json")
    m = {a["id"]: coco.annToMask(a).astype(bool) for a in coco.loadAnns(coco.getAnnIds(imgIds=[1]))}
    expected = np.zeros((H, W), np.uint8)
    # larger instances first, smaller on top; the crowd region becomes ignore (255)
    order = sorted(m, key=lambda k: -m[k].sum())
    ids = {1: 2, 2: 1, 3: 3, 4: 255}
    for ann_id in order:
        expected[m[ann_id]] = ids[ann_id]
    label = source.load("val", "1").label
    np.testing.assert_array_equal(label, expected)
    assert (label == 2).sum() == m[1].sum()  # the small cat inside the big dog survives whole
    assert (label == 3).sum() == 64 and (label == 255).sum() == 60
    assert set(np.unique(label)) == {0, 1, 2, 3, 255}


def test_without_background_unlabelled_is_ignored(coco_root):
    source = CocoSource(coco_root, {"val": ("ann.json", "images")}, background=False)
    label = source.load("val", "2").label
    assert source.class_names == ["dog", "cat", "potted-plant"]
    assert set(np.unique(label)) == {1, 255}


@pytest.mark.parametrize(
    "image_id,reason",
    [("5", "corrupt_image"), ("6", "missing_image"), ("7", "path_outside_root"), ("8", "unknown_category")],
)
def test_bad_inputs_raise_named_reasons(coco_root, image_id, reason):
    source = CocoSource(coco_root, {"val": ("ann.json", "images")}, background=True)
    with pytest.raises(SampleError) as error:
        source.load("val", image_id)
    assert error.value.reason == reason


def test_odd_image_modes_become_8bit_rgb(coco_root):
    source = CocoSource(coco_root, {"val": ("ann.json", "images")}, background=True)
    good = source.load("val", "1").image
    for image_id in ("2", "3", "4"):
        image = source.load("val", image_id).image
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(source.load("val", "3").image, good)  # alpha dropped
    np.testing.assert_array_equal(source.load("val", "2").image[..., 1], good[..., 0])  # gray replicated
    np.testing.assert_array_equal(source.load("val", "4").image[..., 2], good[..., 0])  # 16-bit scaled back


def test_prepare_skips_with_counted_reasons_and_resizes(coco_root, tmp_path):
    source = CocoSource(coco_root, {"val": ("ann.json", "images")}, background=True)
    params = PrepareParams(resolution=16, label_resolution=24, output=str(tmp_path / "out"))
    summary = prepare_split(source, "val", tmp_path / "out" / "val.zarr", params, progress=False)
    assert summary.total == 9 and summary.kept == 5
    assert dict(summary.skipped) == {
        "corrupt_image": 1,
        "missing_image": 1,
        "path_outside_root": 1,
        "unknown_category": 1,
    }
    assert dict(summary.notes) == {"empty_mask": 1}
    store = open_prepared(tmp_path / "out" / "val.zarr")
    assert store.image.shape == (5, 16, 16, 3) and store.label.shape == (5, 24, 24)  # 40x30 → square working sizes
    assert list(store.source_id.values) == [
        "val/good.png",
        "val/gray.png",
        "val/rgba.png",
        "val/deep.png",
        "val/empty.png",
    ]
    np.testing.assert_array_equal(store.present.values[4], [True, False, False, True])  # empty cat dropped, plant kept


def test_prepare_fail_mode_names_split_and_sample(coco_root, tmp_path):
    source = CocoSource(coco_root, {"val": ("ann.json", "images")}, background=True)
    params = PrepareParams(on_error="fail", output=str(tmp_path / "out"))
    with pytest.raises(SampleError, match=r"split 'val', sample '5': .*corrupt.png cannot be decoded"):
        prepare_split(source, "val", tmp_path / "out" / "val.zarr", params, progress=False)
    assert not (tmp_path / "out" / "val.zarr").exists()


def test_missing_annotation_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
        CocoSource(tmp_path, {"val": ("nope.json", "images")}, background=True)


def write_tiny(root: Path, images: list[dict], annotations: list[dict], categories: list[dict] | None = None) -> Path:
    """Writes images/<file_name> (one 30x40 RGB picture each) and ann.json; returns the annotation file."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    for image in images:
        if isinstance(image.get("file_name"), str):
            Image.fromarray(rgb).save(root / "images" / image["file_name"])
    for i, ann in enumerate(annotations, start=1):
        ann.setdefault("id", i)
    categories = [{"id": 3, "name": "dog"}] if categories is None else categories
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _image(image_id, name: str) -> dict:
    return {"id": image_id, "file_name": name, "height": H, "width": W}


def _dog(image_id) -> dict:
    return {"image_id": image_id, "category_id": 3, "segmentation": [[2, 2, 12, 2, 12, 10, 2, 10]], "iscrowd": 0}


def _prepare(root: Path, tmp_path: Path):
    source = CocoSource(root, {"val": ("ann.json", "images")}, background=True)
    params = PrepareParams(output=str(tmp_path / "out"))  # on_error skip, native label size (reads label_shape)
    return source, prepare_split(source, "val", tmp_path / "out" / "val.zarr", params, progress=False)


@pytest.mark.parametrize("field", ["height", "width", "file_name"])
def test_image_record_without_a_field_is_skipped_naming_file_and_image(tmp_path, field):
    bad = _image(2, "bad.png")
    del bad[field]
    write_tiny(tmp_path, [_image(1, "good.png"), bad], [_dog(1), _dog(2)])
    source, summary = _prepare(tmp_path, tmp_path)
    assert source.label_shape("val", "2") is None and source.label_shape("val", "1") == (H, W)
    assert summary.total == 2 and summary.kept == 1 and dict(summary.skipped) == {"malformed_image": 1}
    example = summary.skipped_examples["malformed_image"]
    assert "ann.json: image 2 has no" in example and f"'{field}'" in example
    assert list(open_prepared(tmp_path / "out" / "val.zarr").source_id.values) == ["val/good.png"]


def test_image_record_without_id_refuses_the_file_naming_its_position(tmp_path):
    write_tiny(tmp_path, [_image(1, "good.png"), {"file_name": "x.png", "height": H, "width": W}], [])
    with pytest.raises(DataError, match=r"ann.json: record 1 of 'images' has no integer or string 'id'"):
        CocoSource(tmp_path, {"val": ("ann.json", "images")}, background=True)


@pytest.mark.parametrize("field", ["segmentation", "category_id"])
def test_annotation_without_a_field_skips_only_its_image(tmp_path, field):
    bad = _dog(2)
    del bad[field]
    write_tiny(tmp_path, [_image(1, "good.png"), _image(2, "bad.png")], [_dog(1), bad])
    _, summary = _prepare(tmp_path, tmp_path)
    assert summary.kept == 1 and dict(summary.skipped) == {"malformed_annotation": 1}
    example = summary.skipped_examples["malformed_annotation"]
    assert f"ann.json: annotation 2 of image 2 has no '{field}' (bad.png)" in example


@pytest.mark.parametrize(
    "segmentation",
    [
        [[1, 2, 3]],
        [[1, 2, 3, 4]],
        [["a", "b", "c", "d", "e", "f"]],
        [],
        "garbage",
        {"size": [H, W]},
        {"size": [9, 9], "counts": [81]},
    ],
    ids=["odd_polygon", "short_polygon", "text_polygon", "no_polygon", "string", "rle_no_counts", "rle_wrong_size"],
)
def test_undecodable_segmentation_skips_its_image_naming_the_annotation(tmp_path, segmentation):
    bad = {**_dog(2), "segmentation": segmentation, "id": 7}
    write_tiny(tmp_path, [_image(1, "good.png"), _image(2, "bad.png")], [_dog(1), bad])
    source, summary = _prepare(tmp_path, tmp_path)
    assert summary.kept == 1 and dict(summary.skipped) == {"malformed_annotation": 1}
    with pytest.raises(SampleError, match=r"^malformed_annotation: .*ann.json: annotation 7 of image 2"):
        source.load("val", "2")


def test_string_image_ids_are_kept_sorted_and_matched_by_their_string_form(tmp_path):
    images = [_image(10, "ten.png"), _image("b", "b.png"), _image(2, "two.png"), _image("a", "a.png")]
    write_tiny(tmp_path, images, [{**_dog("10"), "id": 1}, {**_dog("a"), "id": 2}])  # "10" is image 10's annotation
    (tmp_path / "captions.json").write_text(
        json.dumps(
            {
                "annotations": [
                    {"id": 1, "image_id": "a", "caption": "a dog "},
                    {"id": 2, "image_id": 10, "caption": "ten"},
                ]
            }
        )
    )
    source = CocoSource(tmp_path, {"val": ("ann.json", "images")}, background=True, captions={"val": "captions.json"})
    assert source.sample_ids("val") == ["2", "10", "a", "b"]  # integers numerically, then strings
    assert source.label_shape("val", "a") == (H, W)
    for sample_id, caption in (("a", "a dog"), ("10", "ten")):
        sample = source.load("val", sample_id)
        assert (sample.label == 1).sum() == 80 and sample.caption == caption
    assert not (source.load("val", "b").label == 1).any()
    params = PrepareParams(output=str(tmp_path / "out"))
    assert prepare_split(source, "val", tmp_path / "out" / "val.zarr", params, progress=False).kept == 4


@pytest.mark.parametrize("second_id", [1, "1"], ids=["int", "str"])
def test_duplicate_image_ids_refuse_the_file_naming_the_id(tmp_path, second_id):
    write_tiny(tmp_path, [_image(1, "a.png"), _image(second_id, "b.png")], [])
    with pytest.raises(DataError, match=r"ann.json: image id 1 is in 'images' twice \(records 0 and 1\)"):
        CocoSource(tmp_path, {"val": ("ann.json", "images")}, background=True)


def test_duplicate_category_names_refuse_the_file_naming_both_ids(tmp_path):
    write_tiny(tmp_path, [_image(1, "a.png")], [], [{"id": 3, "name": "dog"}, {"id": 4, "name": "dog"}])
    with pytest.raises(DataError, match=r"ann.json: categories 3 and 4 are both named 'dog'"):
        CocoSource(tmp_path, {"val": ("ann.json", "images")}, background=True)


@pytest.mark.parametrize(
    "categories,message",
    [
        ([{"id": 3, "name": "dog"}, {"name": "cat"}], r"ann.json: record 1 of 'categories' needs an integer 'id'"),
        ([{"id": 3}], r"ann.json: record 0 of 'categories' needs an integer 'id' and a 'name'"),
        ([{"id": 3, "name": "dog"}, {"id": 3, "name": "cat"}], r"ann.json: category id 3 appears twice"),
    ],
)
def test_categories_without_id_or_name_refuse_the_file(tmp_path, categories, message):
    write_tiny(tmp_path, [_image(1, "a.png")], [], categories)
    with pytest.raises(DataError, match=message):
        CocoSource(tmp_path, {"val": ("ann.json", "images")}, background=True)


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", r"ann.json is not valid JSON"),
        ("[]", r"ann.json has no 'images' list"),
        ('{"images": [], "annotations": []}', r"ann.json has no 'categories' list"),
        ('{"images": [5], "annotations": [], "categories": []}', r"ann.json has no 'images' list of objects"),
        (
            '{"images": [], "annotations": [{"id": 1, "category_id": 3}], "categories": []}',
            r"ann.json: record 0 of 'annotations' has no 'id' or no 'image_id'",
        ),
    ],
)
def test_malformed_annotation_file_is_a_data_error_naming_it(tmp_path, content, message):
    (tmp_path / "ann.json").write_text(content)
    with pytest.raises(DataError, match=message):
        CocoSource(tmp_path, {"val": ("ann.json", "images")}, background=True)


def test_split_and_class_count_errors_are_data_errors_naming_the_files(tmp_path):
    write_tiny(tmp_path, [_image(1, "a.png")], [], [{"id": 3, "name": "dog"}])
    (tmp_path / "other.json").write_text(
        json.dumps({"images": [], "annotations": [], "categories": [{"id": 4, "name": "cat"}]})
    )
    with pytest.raises(
        DataError, match=r"split 'test' \(.*other.json\) has different category ids from split 'val' \(.*ann.json\)"
    ):
        CocoSource(tmp_path, {"val": ("ann.json", "images"), "test": ("other.json", "images")}, background=True)
    write_tiny(tmp_path, [_image(1, "a.png")], [], [{"id": k, "name": f"c{k}"} for k in range(300)])
    with pytest.raises(DataError, match=r"ann.json: 301 classes do not fit uint8 label maps"):
        CocoSource(tmp_path, {"val": ("ann.json", "images")}, background=True)


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", r"captions.json is not valid JSON"),
        ('{"images": []}', r"captions file .*captions.json has no 'annotations' list"),
        ('{"annotations": [{"id": 1, "caption": "a dog"}]}', r"captions.json: captions record 0 lacks"),
        ('{"annotations": [{"id": 1, "image_id": 1}]}', r"captions.json: captions record 0 lacks"),
    ],
)
def test_malformed_captions_file_is_a_data_error_naming_it(tmp_path, content, message):
    write_tiny(tmp_path, [_image(1, "a.png")], [_dog(1)])
    (tmp_path / "captions.json").write_text(content)
    source = CocoSource(tmp_path, {"val": ("ann.json", "images")}, background=True, captions={"val": "captions.json"})
    with pytest.raises(DataError, match=message):
        source.load("val", "1")
