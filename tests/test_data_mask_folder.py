import numpy as np
import pytest
from PIL import Image

from seg4diff.config import MaskFolderParams
from seg4diff.data.mask_folder import MaskFolderSource, reduce_zero_label
from seg4diff.data.sample import SampleError


def _folder(class_names: list[str]) -> MaskFolderParams:
    return MaskFolderParams(splits={}, class_names=class_names)


def _voc(root, labels: dict[str, np.ndarray], palette: bool = True):
    (root / "JPEGImages").mkdir()
    (root / "SegmentationClass").mkdir()
    for name, label in labels.items():
        Image.fromarray(np.zeros((*label.shape, 3), np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        image = Image.fromarray(label, mode="L")
        if palette:
            image = image.convert("P")
        image.save(root / "SegmentationClass" / f"{name}.png")
    (root / "val.txt").write_text("\n".join(labels) + "\n")


def test_palette_labels_read_as_ids_and_ignore_kept(tmp_path):
    label = np.array([[0, 1, 2], [255, 2, 0]], np.uint8)
    _voc(tmp_path, {"a": label})
    source = MaskFolderSource(
        tmp_path, {"val": ("JPEGImages", "SegmentationClass", "val.txt")}, _folder(["background", "cat", "dog"])
    )
    assert source.has_background and source.sample_ids("val") == ["a"]
    np.testing.assert_array_equal(source.load("val", "a").label, label)


def test_reduce_zero_label_matches_mmsegmentation():
    label = np.array([[0, 1, 2, 255]], np.uint8)
    np.testing.assert_array_equal(reduce_zero_label(label), [[255, 0, 1, 255]])


def test_unknown_class_id_and_wrong_mode_are_named(tmp_path):
    _voc(tmp_path, {"a": np.array([[0, 7]], np.uint8)}, palette=False)
    Image.fromarray(np.zeros((1, 2, 3), np.uint8)).save(tmp_path / "SegmentationClass" / "rgb.png")
    Image.fromarray(np.zeros((1, 2, 3), np.uint8)).save(tmp_path / "JPEGImages" / "rgb.jpg")
    source = MaskFolderSource(
        tmp_path, {"val": ("JPEGImages", "SegmentationClass", None)}, _folder(["background", "cat"])
    )
    with pytest.raises(SampleError) as error:
        source.load("val", "a")
    assert error.value.reason == "unknown_class_id" and "[7]" in error.value.detail
    with pytest.raises(SampleError) as error:
        source.load("val", "rgb")
    assert error.value.reason == "label_not_single_channel"
    assert sorted(source.sample_ids("val")) == ["a", "rgb"]


def test_ids_escaping_the_folder_are_refused(tmp_path):
    _voc(tmp_path, {"a": np.zeros((2, 2), np.uint8)})
    source = MaskFolderSource(tmp_path, {"val": ("JPEGImages", "SegmentationClass", None)}, _folder(["background"]))
    with pytest.raises(SampleError) as error:
        source.load("val", "../JPEGImages/a")
    assert error.value.reason == "path_outside_root"
