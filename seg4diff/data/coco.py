"""COCO-format JSON (instances or stuff; polygons, RLE, iscrowd) read into semantic label maps via pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from seg4diff.data.images import read_rgb, resolve_inside
from seg4diff.data.sample import IGNORE_INDEX, RawSample, SampleError


def load_coco(annotation_file: Path) -> COCO:
    """Returns an indexed pycocotools COCO object, with a clear error for a missing or malformed file."""
    if not annotation_file.is_file():
        raise FileNotFoundError(f"COCO annotation file {annotation_file} does not exist (see data.coco.splits)")
    try:
        dataset = json.loads(annotation_file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{annotation_file} is not valid JSON: {error}") from None
    for key in ("images", "annotations", "categories"):
        if key not in dataset:
            raise ValueError(f"{annotation_file} has no '{key}' list: not a COCO instances/stuff file")
    return index_coco(dataset)


def index_coco(dataset: dict) -> COCO:
    """Returns a pycocotools COCO object indexing an in-memory COCO dict."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


def semantic_label(
    coco: COCO, image_info: dict, class_of_category: dict[int, int], background: bool
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Returns (label map, notes): larger instances painted first and smaller on top, crowd regions → ignore."""
    height, width = image_info["height"], image_info["width"]
    label = np.full((height, width), 0 if background else IGNORE_INDEX, dtype=np.uint8)
    notes = []
    annotations = coco.imgToAnns.get(image_info["id"], [])
    masks = []
    for ann in annotations:
        if ann["category_id"] not in class_of_category:
            raise SampleError(
                "unknown_category",
                f"annotation {ann.get('id')} of image {image_info['id']} has category_id {ann['category_id']}, not in "
                "'categories'",
            )
        mask = coco.annToMask(ann).astype(bool)
        if not mask.any():
            notes.append("empty_mask")
            continue
        masks.append((int(mask.sum()), ann, mask))
    for _, ann, mask in sorted(masks, key=lambda item: -item[0]):
        label[mask] = IGNORE_INDEX if ann.get("iscrowd", 0) else class_of_category[ann["category_id"]]
    return label, tuple(notes)


class CocoSource:
    """COCO-format splits; categories remapped to contiguous ids (background 0 when `background`)."""

    def __init__(
        self,
        root: Path,
        splits: dict[str, tuple[str, str]],
        background: bool,
        captions: dict[str, str | None] | None = None,
    ):
        self.root = Path(root)
        self.background = background
        self.has_background = background
        self._splits = {name: (self.root / ann, self.root / images) for name, (ann, images) in splits.items()}
        self._caption_files = {name: self.root / path for name, path in (captions or {}).items() if path}
        self._captions: dict[str, dict[int, str]] = {}
        self._coco: dict[str, COCO] = {}
        categories = None
        for name in self._splits:
            cats = sorted(self._index(name).dataset["categories"], key=lambda c: c["id"])
            if categories is None:
                categories = cats
            elif [c["id"] for c in cats] != [c["id"] for c in categories]:
                raise ValueError(
                    f"split '{name}' has different categories from the first split; all splits must share them"
                )
        categories = categories or []
        offset = 1 if background else 0
        self.class_of_category = {cat["id"]: index + offset for index, cat in enumerate(categories)}
        self.class_names = (["background"] if background else []) + [cat["name"] for cat in categories]
        if len(self.class_names) >= IGNORE_INDEX:
            raise ValueError(
                f"{len(self.class_names)} classes do not fit uint8 label maps with ignore index {IGNORE_INDEX}"
            )

    def _index(self, split: str) -> COCO:
        if split not in self._splits:
            raise KeyError(f"split '{split}' is not configured; known splits: {sorted(self._splits)}")
        if split not in self._coco:
            self._coco[split] = load_coco(self._splits[split][0])
        return self._coco[split]

    def sample_ids(self, split: str) -> list[str]:
        return [str(image_id) for image_id in sorted(self._index(split).imgs)]

    def _caption(self, split: str, info: dict) -> str:
        """The image's caption: from the split's captions file (first by annotation id), else the image record's."""
        if split not in self._caption_files:
            return info.get("caption", "")
        if split not in self._captions:
            path = self._caption_files[split]
            if not path.is_file():
                raise FileNotFoundError(
                    f"captions file {path} of split '{split}' does not exist (data.coco.splits.{split}.captions)"
                )
            first: dict[int, str] = {}
            for ann in sorted(json.loads(path.read_text())["annotations"], key=lambda a: a["id"]):
                first.setdefault(ann["image_id"], ann["caption"].strip())
            self._captions[split] = first
        return self._captions[split].get(info["id"], "")

    def label_shape(self, split: str, sample_id: str) -> tuple[int, int] | None:
        info = self._index(split).imgs.get(int(sample_id))
        return None if info is None else (int(info["height"]), int(info["width"]))

    def load(self, split: str, sample_id: str) -> RawSample:
        coco = self._index(split)
        info = coco.imgs[int(sample_id)]
        image = read_rgb(resolve_inside(self._splits[split][1], info["file_name"]))
        if image.shape[:2] != (info["height"], info["width"]):
            raise SampleError(
                "size_mismatch",
                f"{info['file_name']} is {image.shape[1]}x{image.shape[0]} but the JSON says "
                f"{info['width']}x{info['height']}",
            )
        label, notes = semantic_label(coco, info, self.class_of_category, self.background)
        return RawSample(
            source_id=f"{split}/{info['file_name']}",
            image=image,
            label=label,
            caption=self._caption(split, info),
            notes=notes,
        )
