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
from seg4diff.errors import DataError


def _is_int(value: object) -> bool:
    """Returns whether `value` is a JSON integer (not a bool, which Python counts as an int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: object) -> bool:
    """Returns whether `value` can be an image id: COCO files in the wild use integers or strings."""
    return _is_int(value) or isinstance(value, str)


def _read_json(path: Path, needs: str) -> object:
    """Returns the parsed JSON of `path`; a one-line DataError when it is not JSON."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON ({error}): expected {needs}") from None


def _check_categories(path: Path, categories: list[dict]) -> None:
    """Returns nothing; raises a one-line DataError unless every category has its own integer id and name."""
    id_of_name: dict[str, int] = {}
    for position, cat in enumerate(categories):
        if not (_is_int(cat.get("id")) and isinstance(cat.get("name"), str)):
            raise DataError(f"{path}: record {position} of 'categories' needs an integer 'id' and a 'name' string")
        if cat["id"] in id_of_name.values():
            raise DataError(f"{path}: category id {cat['id']} appears twice in 'categories'")
        if cat["name"] in id_of_name:  # two classes of one name could not be told apart in prompts or reports
            raise DataError(
                f"{path}: categories {id_of_name[cat['name']]} and {cat['id']} are both named '{cat['name']}': "
                "rename one, or merge them into one category"
            )
        id_of_name[cat["name"]] = cat["id"]


def _sorted_images(path: Path, images: list[dict]) -> list[dict]:
    """Returns the image records sorted by id: integer ids first (numerically), then string ids."""
    position_of: dict[str, int] = {}
    for position, image in enumerate(images):
        if not _is_id(image.get("id")):  # without an id the image cannot be addressed, so not skipped alone either
            raise DataError(f"{path}: record {position} of 'images' has no integer or string 'id'")
        key = str(image["id"])
        if key in position_of:
            raise DataError(f"{path}: image id {key} is in 'images' twice (records {position_of[key]} and {position})")
        position_of[key] = position
    return sorted(images, key=lambda im: (1, 0, im["id"]) if isinstance(im["id"], str) else (0, im["id"], ""))


def load_coco(annotation_file: Path) -> COCO:
    """Returns an indexed COCO object (images sorted by id); a one-line DataError for a malformed file."""
    if not annotation_file.is_file():
        raise FileNotFoundError(f"COCO annotation file {annotation_file} does not exist (see data.coco.splits)")
    dataset = _read_json(annotation_file, "a COCO instances/stuff file")
    for key in ("images", "annotations", "categories"):
        records = dataset.get(key) if isinstance(dataset, dict) else None
        if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
            raise DataError(f"{annotation_file} has no '{key}' list of objects: not a COCO instances/stuff file")
    _check_categories(annotation_file, dataset["categories"])
    dataset["images"] = _sorted_images(annotation_file, dataset["images"])
    id_of = {str(image["id"]): image["id"] for image in dataset["images"]}
    for position, ann in enumerate(dataset["annotations"]):
        if not (_is_id(ann.get("id")) and _is_id(ann.get("image_id"))):  # pycocotools indexes by both
            raise DataError(f"{annotation_file}: record {position} of 'annotations' has no 'id' or no 'image_id'")
        # matched by string form, as sample ids are strings: image_id "7" and 7 name one image
        ann["image_id"] = id_of.get(str(ann["image_id"]), ann["image_id"])
        ann.setdefault("category_id", None)  # pycocotools indexes by it; _annotation_mask skips the image
    return index_coco(dataset)


def index_coco(dataset: dict) -> COCO:
    """Returns a pycocotools COCO object indexing an in-memory COCO dict."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


def _image_problem(info: dict) -> str | None:
    """Returns what makes an image record unusable (no file_name, no positive integer height/width), else None."""
    if not isinstance(info.get("file_name"), str) or not info["file_name"]:
        return "has no 'file_name'"
    for key in ("height", "width"):
        if not (_is_int(info.get(key)) and info[key] > 0):
            return f"has no positive integer '{key}' (it has {info.get(key)!r})"
    return None


def _annotation_mask(coco: COCO, ann: dict, image_info: dict, class_of_category: dict[int, int]) -> np.ndarray:
    """Returns the annotation's (height, width) boolean mask; SampleError naming the annotation when it is unusable."""
    where = f"annotation {ann.get('id')} of image {image_info['id']}"
    for key in ("category_id", "segmentation"):
        if ann.get(key) is None:
            raise SampleError("malformed_annotation", f"{where} has no '{key}'")
    if not _is_int(ann["category_id"]) or ann["category_id"] not in class_of_category:
        raise SampleError("unknown_category", f"{where} has category_id {ann['category_id']!r}, not in 'categories'")
    try:
        mask = coco.annToMask(ann).astype(bool)
    except Exception as error:  # pycocotools fails on a bad polygon or RLE with whatever error its code hits first
        detail = f"{where}: its segmentation cannot be decoded ({type(error).__name__}: {error})"
        raise SampleError("malformed_annotation", detail) from None
    if mask.shape != (image_info["height"], image_info["width"]):
        raise SampleError("malformed_annotation", f"{where}: its RLE size {list(mask.shape)} is not the image's")
    return mask


def semantic_label(
    coco: COCO, image_info: dict, class_of_category: dict[int, int], background: bool
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Returns (label map, notes): larger instances painted first and smaller on top, crowd regions → ignore."""
    label = np.full((image_info["height"], image_info["width"]), 0 if background else IGNORE_INDEX, dtype=np.uint8)
    notes, masks = [], []
    for ann in coco.imgToAnns.get(image_info["id"], []):
        mask = _annotation_mask(coco, ann, image_info, class_of_category)
        if not mask.any():
            notes.append("empty_mask")
            continue
        masks.append((int(mask.sum()), ann, mask))
    for _, ann, mask in sorted(masks, key=lambda item: -item[0]):
        label[mask] = IGNORE_INDEX if ann.get("iscrowd", 0) else class_of_category[ann["category_id"]]
    return label, tuple(notes)


def read_captions(path: Path) -> dict[str, str]:
    """Returns each image id's (as a string) first caption by annotation id, from a COCO captions file."""
    data = _read_json(path, "a COCO captions file")
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise DataError(f"captions file {path} has no 'annotations' list: not a COCO captions file")
    for position, ann in enumerate(annotations):
        usable = isinstance(ann, dict) and _is_int(ann.get("id")) and _is_id(ann.get("image_id"))
        if not (usable and isinstance(ann.get("caption"), str)):
            raise DataError(f"{path}: captions record {position} lacks an integer 'id', 'image_id' or a 'caption'")
    first: dict[str, str] = {}
    for ann in sorted(annotations, key=lambda a: a["id"]):
        first.setdefault(str(ann["image_id"]), ann["caption"].strip())
    return first


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
        self._captions: dict[str, dict[str, str]] = {}
        self._coco: dict[str, COCO] = {}
        self._images: dict[str, dict[str, dict]] = {}  # split → image record by sample id (the id as a string)
        categories, first = None, None
        for name in self._splits:
            cats = sorted(self._index(name).dataset["categories"], key=lambda c: c["id"])
            if categories is None:
                categories, first = cats, name
            elif [c["id"] for c in cats] != [c["id"] for c in categories]:
                raise DataError(
                    f"split '{name}' ({self._splits[name][0]}) has different category ids from split '{first}' "
                    f"({self._splits[first][0]}); all splits must share them"
                )
        categories = categories or []
        offset = 1 if background else 0
        self.class_of_category = {cat["id"]: index + offset for index, cat in enumerate(categories)}
        self.class_names = (["background"] if background else []) + [cat["name"] for cat in categories]
        if len(self.class_names) >= IGNORE_INDEX:
            raise DataError(
                f"{self._splits[first][0]}: {len(self.class_names)} classes do not fit uint8 label maps with ignore "
                f"index {IGNORE_INDEX}"
            )

    def _index(self, split: str) -> COCO:
        if split not in self._splits:
            raise KeyError(f"split '{split}' is not configured; known splits: {sorted(self._splits)}")
        if split not in self._coco:
            self._coco[split] = load_coco(self._splits[split][0])
            self._images[split] = {str(image["id"]): image for image in self._coco[split].dataset["images"]}
        return self._coco[split]

    def sample_ids(self, split: str) -> list[str]:
        self._index(split)
        return list(self._images[split])  # in load_coco's order

    def _caption(self, split: str, info: dict) -> str:
        """The image's caption: from the split's captions file (first by annotation id), else the image record's; ''
        when the configured file is not there (captions are optional: the stages that need them refuse at start)."""
        if split not in self._caption_files:
            return info.get("caption", "")
        if split not in self._captions:
            path = self._caption_files[split]
            self._captions[split] = read_captions(path) if path.is_file() else {}
        return self._captions[split].get(str(info["id"]), "")

    def label_shape(self, split: str, sample_id: str) -> tuple[int, int] | None:
        self._index(split)
        info = self._images[split].get(sample_id)
        return None if info is None or _image_problem(info) else (info["height"], info["width"])

    def load(self, split: str, sample_id: str) -> RawSample:
        coco = self._index(split)
        info = self._images[split][sample_id]
        annotation_file = self._splits[split][0]
        problem = _image_problem(info)
        if problem:
            raise SampleError("malformed_image", f"{annotation_file}: image {sample_id} {problem}")
        image = read_rgb(resolve_inside(self._splits[split][1], info["file_name"]))
        if image.shape[:2] != (info["height"], info["width"]):
            raise SampleError(
                "size_mismatch",
                f"{info['file_name']} is {image.shape[1]}x{image.shape[0]} but the JSON says "
                f"{info['width']}x{info['height']}",
            )
        try:
            label, notes = semantic_label(coco, info, self.class_of_category, self.background)
        except SampleError as error:  # semantic_label knows the annotation, not which file it came from
            raise SampleError(error.reason, f"{annotation_file}: {error.detail} ({info['file_name']})") from None
        return RawSample(
            source_id=f"{split}/{info['file_name']}",
            image=image,
            label=label,
            caption=self._caption(split, info),
            notes=notes,
        )
