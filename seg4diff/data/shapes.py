"""Shapes: a deterministic synthetic dataset of coloured shapes with captions, written in COCO format.

Each image holds 1–3 objects of distinct classes ("red circle", …); objects often share a colour or a shape
with another object in the same image, so neither word alone identifies an object. Images are painted from
the same COCO label composition the reader uses, so pixels and labels agree exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from seg4diff.config import ShapesParams
from seg4diff.data.coco import index_coco, semantic_label
from seg4diff.data.shapes_vocabulary import CLASS_NAMES, COLOURS, SHAPES

SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
SHARE_PROBABILITY = 0.6  # chance that a further object shares the colour or the shape of an earlier one


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


def _background(rng: np.random.Generator, size: int, texture: bool) -> np.ndarray:
    grey = rng.uniform(70, 190)
    base = np.full((size, size, 3), grey) + rng.uniform(-15, 15, size=3)
    if texture:
        coarse = rng.normal(0, 25, size=(size // 8, size // 8, 3))
        base += np.kron(coarse, np.ones((8, 8, 1))) + rng.normal(0, 8, size=base.shape)
    return base


def render_image(label: np.ndarray, rng: np.random.Generator, texture: bool) -> np.ndarray:
    """Returns the uint8 RGB image painting each class id of `label` (1-based, 0 = background) in its colour."""
    image = _background(rng, label.shape[0], texture)
    for class_id in np.unique(label):
        if class_id == 0:
            continue
        colour = np.array(COLOURS[CLASS_NAMES[class_id - 1].split()[0]], dtype=float)
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


def generate_split(root: Path, split: str, count: int, params: ShapesParams) -> Path:
    """Writes images/<split>/*.png and annotations/<split>.json under root; returns the JSON path."""
    split_seed = SPLIT_SEEDS.get(split, len(SPLIT_SEEDS))
    rng = np.random.default_rng([params.seed, split_seed])
    caption_rng = np.random.default_rng([params.seed, split_seed, 1])  # its own stream: images do not depend on it
    images, annotations = [], []
    for image_id in range(count):
        info, anns = _sample(rng, caption_rng, image_id, params)
        images.append(info)
        annotations.extend(anns)
    for ann_id, ann in enumerate(annotations, start=1):
        ann["id"] = ann_id
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(CLASS_NAMES)]
    dataset = {
        "info": {"description": "seg4diff Shapes", "seed": params.seed, "split": split},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    coco = index_coco(dataset)
    class_of_category = {k + 1: k + 1 for k in range(len(CLASS_NAMES))}
    image_dir = root / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    for info in tqdm(images, desc=f"shapes {split}", unit="img", leave=False):
        label, _ = semantic_label(coco, info, class_of_category, background=True)
        Image.fromarray(render_image(label, rng, params.texture)).save(image_dir / info["file_name"])
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
