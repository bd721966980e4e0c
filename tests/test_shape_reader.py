import json

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from seg4diff.config import ShapesParams
from seg4diff.data.coco import CocoSource
from seg4diff.data.prepared import resize_image
from seg4diff.data.shapes import generate_split
from seg4diff.data.shapes_vocabulary import COLOURS, SHAPE_CLASSES, SHAPE_PALETTE, SHAPES
from seg4diff.organism.shape_reader import (
    blob_shape,
    blobs,
    caption_objects,
    colour_recall,
    object_recall,
    objects,
    prompt_reading,
    shape_recall,
)


def _readings(root, design: str, count: int = 300, seed: int = 3) -> dict[int, list[tuple[str, str, str, str]]]:
    """Returns per working size (64, 32) each object's (true shape, read shape, true colour, read colour): the blob
    overlapping the object most, in the image prepared at that size as prepare does (bicubic); "none" if no blob."""
    params = ShapesParams(image_size=64, num_train=1, num_val=1, num_test=count, seed=seed, design=design)
    dataset = json.loads(generate_split(root, "test", count, params).read_text())
    names = {c["id"]: c["name"] for c in dataset["categories"]}
    colour_of = {  # the shape design records each object's colour; a colour_shape class name starts with it
        (str(a["image_id"]), a["category_id"]): a.get("colour", names[a["category_id"]].split()[0])
        for a in dataset["annotations"]
    }
    source = CocoSource(root, {"test": ("annotations/test.json", "images/test")}, background=True)
    readings = {64: [], 32: []}
    for sample_id in source.sample_ids("test"):
        sample = source.load("test", sample_id)
        for size, found in readings.items():
            image = resize_image(sample.image, (size, size))
            label = np.asarray(Image.fromarray(sample.label).resize((size, size), Image.Resampling.NEAREST))
            seen = blobs(image, design=design)
            for k in np.unique(sample.label)[1:]:
                truth = (source.class_names[k].split()[-1], colour_of[sample_id, int(k)])
                best = max(seen, key=lambda blob: (blob[2] & (label == k)).sum(), default=None)
                read = (best[1], best[0]) if best is not None and (best[2] & (label == k)).any() else ("none", "none")
                found.append((truth[0], read[0], truth[1], read[1]))
    return readings


def _accuracy(found, shapes) -> tuple[float, dict[str, float], np.ndarray]:
    """Returns (share of objects read as their shape, that share per shape, confusion counts true × read + none)."""
    read = [*shapes, "none"]
    confusion = np.zeros((len(shapes), len(read)), dtype=int)
    for truth, got, *_ in found:
        confusion[shapes.index(truth), read.index(got)] += 1
    per_shape = {shape: confusion[i, i] / confusion[i].sum() for i, shape in enumerate(shapes)}
    return np.trace(confusion) / confusion.sum(), per_shape, confusion


def test_the_reader_reads_every_shape_of_the_shape_design_at_32_and_64_px(tmp_path):
    readings = _readings(tmp_path, "shape")
    for size, found in readings.items():
        overall, per_shape, confusion = _accuracy(found, list(SHAPE_CLASSES))
        assert confusion.sum() >= 550  # measured: 608 objects in 300 images
        # measured on these 300 images: every object right at both sizes (and on 1,000 others: 1,932 objects)
        assert overall >= 0.97 and min(per_shape.values()) >= 0.9, (size, per_shape)
        colours_right = np.mean([colour == read for *_, colour, read in found])
        assert colours_right >= 0.98  # measured: 1.0 at both sizes


def test_the_reader_keeps_its_accuracy_on_the_colour_shape_design(tmp_path):
    readings = _readings(tmp_path, "colour_shape")
    overall = {}
    for size, found in readings.items():
        overall[size], per_shape, _ = _accuracy(found, list(SHAPES))
        assert min(per_shape.values()) >= 0.85, (size, per_shape)
    # measured before and after the shape design: 0.970 at 64 px, 0.908 at 32 px (occluded objects misread)
    assert overall[64] >= 0.96 and overall[32] >= 0.90


def _fill_rule_objects(image: np.ndarray) -> list[tuple[str, str, int]]:
    """Returns what `objects` returned before the shape design (its code, kept here to compare with)."""
    image = np.asarray(image, dtype=float) / 255
    saturated = (image.max(-1) - image.min(-1)) > 0.25
    palette = np.array(list(COLOURS.values()), dtype=float) / 255
    nearest = np.argmin(((image[..., None, :] - palette) ** 2).sum(-1), axis=-1)
    found = []
    for colour_index, colour in enumerate(COLOURS):
        labels, count = ndimage.label(saturated & (nearest == colour_index))
        for blob in range(1, count + 1):
            ys, xs = np.nonzero(labels == blob)
            if len(ys) >= 6:
                radius = np.sqrt((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2).max() + 0.5
                fill = len(ys) / (np.pi * radius**2)
                shape = "triangle" if fill < 0.52 else "square" if fill < 0.80 else "circle"
                found.append((colour, shape, len(ys)))
    return sorted(found, key=lambda item: -item[2])


def test_the_colour_shape_reading_is_unchanged(tmp_path):
    params = ShapesParams(image_size=64, num_train=1, num_val=1, num_test=60, seed=4, design="colour_shape")
    generate_split(tmp_path, "test", 60, params)
    compared = 0
    for path in sorted((tmp_path / "images/test").glob("*.png")):
        image = np.asarray(Image.open(path).convert("RGB"))
        for size in (64, 32):
            small = resize_image(image, (size, size))
            assert objects(small, design="colour_shape") == _fill_rule_objects(small)
            compared += len(_fill_rule_objects(small))
    assert compared >= 200  # measured: 243 blobs


def _draw(shape: str, centre: tuple[float, float], radius: float, image: Image.Image, colour, theta: float) -> None:
    """Draws one shape of the shape design, turned by `theta`, into a PIL image (the test's drawing, not the
    generator's)."""
    draw, (x, y) = ImageDraw.Draw(image), centre
    if shape in ("circle", "ring"):
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
        if shape == "ring":
            hole = 0.55 * radius
            draw.ellipse([x - hole, y - hole, x + hole, y + hole], fill=(128, 128, 128))
        return
    if shape == "cross":  # four arms 0.6 wide of their length
        arm = np.array([[1, -0.3], [1, 0.3], [0.3, 0.3]])
        quarters = [arm @ np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]]) for t in np.arange(4) * np.pi / 2]
        points = np.concatenate(quarters)
        points = points / np.linalg.norm(points, axis=1).max()
    else:
        corners = {"square": 4, "triangle": 3, "star": 10}[shape]
        angles = np.arange(corners) * 2 * np.pi / corners
        scale = np.where(np.arange(corners) % 2 == 0, 1.0, 0.5) if shape == "star" else np.ones(corners)
        points = np.stack([np.cos(angles), np.sin(angles)], axis=1) * scale[:, None]
    turn = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    draw.polygon([tuple(p) for p in np.array(centre) + radius * points @ turn], fill=colour)


@pytest.mark.parametrize("side_share", [0.19, 0.31])  # a shape's radius over the image side: small and large
def test_blob_shape_names_each_drawn_shape_at_64_and_32_px(side_share):
    read = 0
    for shape in SHAPE_CLASSES:
        for theta in np.arange(8) * np.pi / 13:  # turned every which way against the pixel grid
            image = Image.new("RGB", (64, 64), (128, 128, 128))
            _draw(shape, (32, 32), side_share * 64, image, SHAPE_PALETTE["purple"], theta)
            for size in (64, 32):  # drawn at 64 px and prepared at 32 px (bicubic), as the dataset is
                found = objects(resize_image(np.asarray(image), (size, size)), design="shape")
                assert [(colour, shape_read) for colour, shape_read, _ in found] == [("purple", shape)], (shape, size)
                read += 1
    assert read == 6 * 8 * 2
    yy, xx = np.mgrid[:40, :40]
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 <= 12**2
    assert blob_shape(disc, "colour_shape") == blob_shape(disc, "shape") == "circle"
    assert blob_shape(disc & ((yy - 20) ** 2 + (xx - 20) ** 2 > 6**2), "shape") == "ring"


def test_caption_objects_and_the_three_recalls_read_both_designs():
    image = Image.new("RGB", (32, 32), (120, 120, 120))
    _draw("star", (9, 9), 7, image, SHAPE_PALETTE["red"], 0.3)
    _draw("circle", (23, 22), 7, image, SHAPE_PALETTE["red"], 0.0)
    image = np.asarray(image)
    caption = "red star and background and red circle"
    assert caption_objects(caption) == {("red", "star"), ("red", "circle")}
    assert caption_objects("red circle and background and blue square") == {("red", "circle"), ("blue", "square")}
    assert sorted((c, s) for c, s, _ in objects(image, design="shape")) == [("red", "circle"), ("red", "star")]
    assert object_recall(image, caption, "shape") == shape_recall(image, caption, "shape") == 1.0
    assert colour_recall(image, caption, "shape") == 1.0
    other = "blue star and red ring"  # the star's colour is wrong, the ring absent
    assert object_recall(image, other, "shape") == 0.0
    assert shape_recall(image, other, "shape") == 0.5 and colour_recall(image, other, "shape") == 0.5
    assert shape_recall(image, "cyan circle and purple star", "shape") == 1.0
    assert colour_recall(image, "cyan circle and purple star", "shape") == 0.0
    # the colour_shape reading knows no star: the star is a triangle or a square there
    assert shape_recall(image, caption, "colour_shape") == 0.5 and colour_recall(image, caption, "colour_shape") == 1.0
    grey = np.full((32, 32, 3), 0.5)
    for recall in (object_recall, shape_recall, colour_recall):
        assert recall(grey, "red star", "shape") == 0.0 and np.isnan(recall(grey, "background", "shape"))


def test_prompt_reading_sets_each_recall_beside_its_chance_from_the_next_caption():
    first, second = Image.new("RGB", (32, 32), (120, 120, 120)), Image.new("RGB", (32, 32), (120, 120, 120))
    _draw("star", (16, 16), 9, first, SHAPE_PALETTE["red"], 0.3)
    _draw("ring", (16, 16), 9, second, SHAPE_PALETTE["blue"], 0.0)
    images = np.stack([np.asarray(first), np.asarray(second)]) / 255
    reading = prompt_reading(images, ["red star", "blue ring"], "shape")
    assert reading["shape_recall"] == reading["colour_recall"] == reading["object_recall"] == 1.0
    # each image read against the other's caption: neither its shape nor its colour is there
    assert reading["shape_recall_chance"] == reading["colour_recall_chance"] == 0.0
    assert reading["caption_colour_agreement"] == 1.0 and reading["caption_colour_chance"] == 1 / 6
    swapped = prompt_reading(images, ["blue ring", "red star"], "shape")
    assert swapped["shape_recall"] == 0.0 and swapped["shape_recall_chance"] == 1.0
