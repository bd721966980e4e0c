"""Shapes: a deterministic synthetic dataset of coloured shapes with captions, written in COCO format.

Two designs (`data.shapes.design`):
- colour_shape: each image holds 1–3 objects of distinct classes ("red circle", …); objects often share a colour or a
  shape with another object in the same image, so neither word alone identifies an object — but the colour word
  names the class's colour, so a colour rule given the prompt segments well without reading shape.
- shape: the classes are six shapes ("circle" … "ring") drawn large; each object's colour is drawn independently of its
  class, and in `same_colour_share` of the images all objects have one colour, so only shape grounds a class word.
  Captions name colour and shape ("red star and red circle"), so generated images can be checked for both.
Images are painted from the same COCO label composition the reader uses, so pixels and labels agree exactly.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage
from tqdm import tqdm

from seg4diff.config import ShapesParams
from seg4diff.data.coco import index_coco, semantic_label
from seg4diff.data.shapes_vocabulary import CLASS_NAMES, COLOURS, DESIGNS, SHAPE_CLASSES, SHAPE_PALETTE, SHAPES

SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
SHARE_PROBABILITY = 0.6  # chance that a further object shares the colour or the shape of an earlier one

# The shape design's geometry. Objects are large so that six shapes stay apart on the organism's 16×16 token grid
# (32 px), and smaller the more an image holds, so that they fit without touching: ranges of the radius of the disc
# through a shape's corners (of the image side) by object count — two circles of radius 0.27 or three of 0.23 are the
# most a square holds apart — and the least gap between two objects' pixels, so same-coloured neighbours stay two
# blobs at 32 px.
SHAPE_RADIUS = {1: (0.26, 0.36), 2: (0.2, 0.26), 3: (0.17, 0.22)}
SHAPE_GAP = 0.06
# each shape's pose at rotation 0 (radians, image y pointing down): triangle and star point up, square and cross stand
# on a side, as drawn in a textbook
UPRIGHT = {"triangle": -np.pi / 2, "star": -np.pi / 2, "square": np.pi / 4}
STAR_INNER = 0.5  # inner / outer radius: fat points, which survive downsampling
CROSS_ARM = 0.3  # half the arm width / the arm's length: concave enough to stay apart from a square at 32 px
RING_INNER = 0.55  # hole radius / outer radius: a hole of several pixels at 32 px


def _pick_classes(rng: np.random.Generator, count: int) -> list[int]:
    """Returns `count` distinct class indices, each further one often sharing a colour or shape with an earlier one."""
    chosen = [int(rng.integers(len(CLASS_NAMES)))]
    while len(chosen) < count:
        free = [k for k in range(len(CLASS_NAMES)) if k not in chosen]
        sharing = [k for k in free if any(k // 3 == c // 3 or k % 3 == c % 3 for c in chosen)]
        pool = sharing if sharing and rng.random() < SHARE_PROBABILITY else free
        chosen.append(int(rng.choice(pool)))
    return chosen


def _polygon(shape: str, centre: np.ndarray, radius: float, angle: float) -> list[float]:
    corners = {"circle": 32, "square": 4, "triangle": 3}[shape]
    theta = angle + np.arange(corners) * 2 * np.pi / corners
    points = centre + radius * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    return [round(float(v), 2) for v in points.reshape(-1)]


def _place(rng: np.random.Generator, size: int, taken: list[tuple[np.ndarray, float]]) -> tuple[np.ndarray, float]:
    """Returns (centre, radius) inside the image, avoiding earlier objects where 50 tries allow."""
    for _ in range(50):
        radius = rng.uniform(0.14, 0.26) * size
        centre = rng.uniform(radius + 1, size - radius - 1, size=2)
        if all(np.linalg.norm(centre - c) > radius + r + 1 for c, r in taken):
            break
    return centre, radius


@functools.cache
def _outline(shape: str) -> list[np.ndarray]:
    """Returns the shape's polygons, (N, 2) points around the origin, the farthest at 1 (a ring: outer, then hole)."""

    def regular(corners: int) -> np.ndarray:
        theta = np.arange(corners) * 2 * np.pi / corners
        return np.stack([np.cos(theta), np.sin(theta)], axis=1)

    if shape == "star":
        return [regular(10) * np.where(np.arange(10) % 2 == 0, 1.0, STAR_INNER)[:, None]]
    if shape == "cross":
        a = CROSS_ARM
        quarter = np.array([[1, -a], [1, a], [a, a]])  # one arm's end and the inner corner that follows it
        turns = [
            quarter @ np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]]) for t in np.arange(4) * np.pi / 2
        ]
        points = np.concatenate(turns)
        return [points / np.linalg.norm(points, axis=1).max()]
    if shape == "ring":
        return [regular(32), RING_INNER * regular(32)]
    return [regular({"circle": 32, "square": 4, "triangle": 3}[shape])]


def _shape_polygons(shape: str, centre: np.ndarray, radius: float, angle: float) -> list[list[float]]:
    """Returns the shape's COCO polygons (x0, y0, x1, …) in the image: `_outline` turned by `angle`, scaled, moved."""
    turn = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    return [np.round(centre + radius * points @ turn, 2).reshape(-1).tolist() for points in _outline(shape)]


def _rasterise(polygon: list[float], size: int) -> dict:
    """Returns the compressed RLE of one polygon in a size×size image."""
    return mask_utils.merge(mask_utils.frPyObjects([polygon], size, size))


def _shape_rle(polygons: list[list[float]], size: int) -> dict:
    """Returns the compressed RLE of the first polygon, less the second where there is one (a ring's hole)."""
    if len(polygons) == 1:
        return _rasterise(polygons[0], size)
    outer, hole = (mask_utils.decode(_rasterise(polygon, size)).astype(bool) for polygon in polygons)
    return mask_utils.encode(np.asfortranarray((outer & ~hole).astype(np.uint8)))


def _layout(
    rng: np.random.Generator, shapes: list[str], size: int, rotation: float
) -> list[tuple[list[list[float]], dict]]:
    """Returns (polygons, RLE) of each shape, placed inside the image at least SHAPE_GAP from the others' pixels
    (outlines, not enclosing discs: a triangle's corner may reach into a star's notch, so large objects fit), each
    turned from its UPRIGHT pose by up to ±`rotation` degrees."""
    low, high = SHAPE_RADIUS[min(len(shapes), 3)]
    scale = min(1.0, np.sqrt(3 / len(shapes)))  # more than three objects: smaller still
    gap = max(1, round(SHAPE_GAP * size))
    for _ in range(1000):  # a layout with no room for its next object is drawn again from the start
        placed, taken = [], np.zeros((size, size), dtype=bool)
        for shape in shapes:
            for _ in range(20):
                radius = rng.uniform(low, high) * scale * size
                centre = rng.uniform(radius + 1, size - radius - 1, size=2)
                turn = UPRIGHT.get(shape, 0.0) + np.deg2rad(rng.uniform(-rotation, rotation))
                polygons = _shape_polygons(shape, centre, radius, turn)
                outer = mask_utils.decode(_rasterise(polygons[0], size)).astype(bool)  # a ring's hole is taken too
                if not (outer & taken).any():
                    break
            else:
                break
            placed.append((polygons, _shape_rle(polygons, size)))
            taken |= ndimage.binary_dilation(outer, iterations=gap)
        else:
            return placed
    raise ValueError(f"{len(shapes)} shapes do not fit a {size}-pixel image apart; lower data.shapes.max_objects")


def _background(rng: np.random.Generator, size: int, texture: bool) -> np.ndarray:
    grey = rng.uniform(70, 190)
    base = np.full((size, size, 3), grey) + rng.uniform(-15, 15, size=3)
    if texture:
        coarse = rng.normal(0, 25, size=(size // 8, size // 8, 3))
        base += np.kron(coarse, np.ones((8, 8, 1))) + rng.normal(0, 8, size=base.shape)
    return base


def render_image(
    label: np.ndarray, rng: np.random.Generator, texture: bool, colour_of: dict[int, tuple] | None = None
) -> np.ndarray:
    """Returns the uint8 RGB image painting each class id of `label` (1-based, 0 = background) in its colour:
    `colour_of[class_id]` (the shape design: an object's own colour), else the colour_shape class's colour."""
    image = _background(rng, label.shape[0], texture)
    for class_id in np.unique(label):
        if class_id == 0:
            continue
        if colour_of is None:
            colour = np.array(COLOURS[CLASS_NAMES[class_id - 1].split()[0]], dtype=float)
        else:
            colour = np.array(colour_of[int(class_id)], dtype=float)
        image[label == class_id] = colour * rng.uniform(0.85, 1.1) + rng.normal(
            0, 6, size=((label == class_id).sum(), 3)
        )
    return np.clip(image, 0, 255).astype(np.uint8)


def _caption(phrases: list[str], rng: np.random.Generator, background: bool) -> str:
    """Returns the phrases joined by " and ", with "background" inserted at a random place when asked."""
    if background:
        phrases = list(phrases)
        phrases.insert(int(rng.integers(len(phrases) + 1)), "background")
    return " and ".join(phrases)


def _sample(
    rng: np.random.Generator, caption_rng: np.random.Generator, image_id: int, params: ShapesParams
) -> tuple[dict, list[dict]]:
    size = params.image_size
    count = int(rng.integers(params.min_objects, params.max_objects + 1))
    classes = _pick_classes(rng, count)
    annotations, taken = [], []
    for class_index in classes:
        centre, radius = _place(rng, size, taken)
        taken.append((centre, radius))
        polygon = _polygon(SHAPES[class_index % 3], centre, radius, rng.uniform(0, 2 * np.pi))
        segmentation: list | dict = [polygon]
        if params.mask_format == "rle":
            rle = mask_utils.merge(mask_utils.frPyObjects([polygon], size, size))
            segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        area = float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects([polygon], size, size))))
        xs, ys = polygon[0::2], polygon[1::2]
        annotations.append(
            {
                "image_id": image_id,
                "category_id": class_index + 1,
                "segmentation": segmentation,
                "area": area,
                "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                "iscrowd": 0,
            }
        )
    order = rng.permutation(count)
    caption = _caption([CLASS_NAMES[classes[i]] for i in order], caption_rng, params.caption_background)
    info = {"id": image_id, "file_name": f"{image_id:06d}.png", "height": size, "width": size, "caption": caption}
    return info, annotations


def _shape_sample(
    rng: np.random.Generator, caption_rng: np.random.Generator, image_id: int, params: ShapesParams
) -> tuple[dict, list[dict]]:
    """Returns one shape-design image record and its annotations, each annotation with its object's colour."""
    size = params.image_size
    count = int(rng.integers(params.min_objects, params.max_objects + 1))
    classes = [int(k) for k in rng.choice(len(SHAPE_CLASSES), size=count, replace=False)]
    palette = list(SHAPE_PALETTE)
    if rng.random() < params.same_colour_share:  # one colour for all: colour tells the objects nothing
        colours = [palette[int(rng.integers(len(palette)))]] * count
    else:  # all different: drawn without regard to class, so colour still says nothing about the class
        colours = [palette[int(k)] for k in rng.choice(len(palette), size=count, replace=False)]
    annotations = []
    layout = _layout(rng, [SHAPE_CLASSES[k] for k in classes], size, params.rotation)
    for class_index, colour, (polygons, rle) in zip(classes, colours, layout):
        segmentation: list | dict = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        if params.mask_format == "polygon" and len(polygons) == 1:  # a ring is always RLE: polygons have no holes
            segmentation = polygons
        annotations.append(
            {
                "image_id": image_id,
                "category_id": class_index + 1,
                "colour": colour,
                "segmentation": segmentation,
                "area": float(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 0,
            }
        )
    order = rng.permutation(count)
    phrases = [f"{colours[i]} {SHAPE_CLASSES[classes[i]]}" for i in order]
    caption = _caption(phrases, caption_rng, params.caption_background)
    info = {"id": image_id, "file_name": f"{image_id:06d}.png", "height": size, "width": size, "caption": caption}
    return info, annotations


def generate_split(root: Path, split: str, count: int, params: ShapesParams) -> Path:
    """Writes images/<split>/*.png and annotations/<split>.json under root; returns the JSON path."""
    class_names = DESIGNS[params.design].class_names
    if params.max_objects > len(class_names):  # objects in one image have distinct classes
        raise ValueError(
            f"data.shapes.max_objects ({params.max_objects}) exceeds the {params.design} design's "
            f"{len(class_names)} classes; objects in one image have distinct classes"
        )
    split_seed = SPLIT_SEEDS.get(split, len(SPLIT_SEEDS))
    rng = np.random.default_rng([params.seed, split_seed])
    caption_rng = np.random.default_rng([params.seed, split_seed, 1])  # its own stream: images do not depend on it
    sample = _shape_sample if params.design == "shape" else _sample
    images, annotations = [], []
    for image_id in range(count):
        info, anns = sample(rng, caption_rng, image_id, params)
        images.append(info)
        annotations.extend(anns)
    for ann_id, ann in enumerate(annotations, start=1):
        ann["id"] = ann_id
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(class_names)]
    dataset = {
        "info": {"description": "seg4diff Shapes", "seed": params.seed, "split": split},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    coco = index_coco(dataset)
    class_of_category = {k + 1: k + 1 for k in range(len(class_names))}
    image_dir = root / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    for info in tqdm(images, desc=f"shapes {split}", unit="img", leave=False):
        label, _ = semantic_label(coco, info, class_of_category, background=True)
        colour_of = None
        if params.design == "shape":
            colour_of = {ann["category_id"]: SHAPE_PALETTE[ann["colour"]] for ann in coco.imgToAnns.get(info["id"], [])}
        Image.fromarray(render_image(label, rng, params.texture, colour_of)).save(image_dir / info["file_name"])
    ann_path = root / "annotations" / f"{split}.json"
    ann_path.parent.mkdir(parents=True, exist_ok=True)
    ann_path.write_text(json.dumps(dataset))
    return ann_path


def generate_shapes(root: Path, params: ShapesParams, splits: list[str]) -> dict[str, Path]:
    """Writes the Shapes dataset for `splits` (sizes from params) and returns each split's annotation file."""
    counts = {"train": params.num_train, "val": params.num_val, "test": params.num_test}
    unknown = set(splits) - set(counts)
    if unknown:
        raise ValueError(f"Shapes has splits train/val/test; prepare.splits names {sorted(unknown)}")
    return {split: generate_split(Path(root), split, counts[split], params) for split in splits}
