"""The `data` params group: which dataset source, where its files are, and each source's own settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from seg4diff.config.group import Group

__all__ = ["CocoParams", "CocoSplit", "DataParams", "MaskFolderParams", "MaskFolderSplit", "ShapesParams"]


class ShapesParams(Group):
    image_size: int = Field(64, ge=16)
    num_train: int = Field(ge=1)
    num_val: int = Field(ge=1)
    num_test: int = Field(ge=1)
    min_objects: int = Field(1, ge=1)
    max_objects: int = Field(3, ge=1)
    texture: bool = False
    mask_format: Literal["polygon", "rle"] = "polygon"
    caption_background: bool = Field(
        True,
        description="captions also name 'background' (at a random place), as the prompts that name it as a class do",
    )
    seed: int = 0
    design: Literal["colour_shape", "shape"] = Field(
        "colour_shape",
        description="colour_shape: 12 classes 'red circle' …, a class's colour fixed; shape: 6 classes 'circle' … "
        "'ring', each object's colour drawn independently of its class, so only shape grounds a class word",
    )
    rotation: float = Field(
        15.0,
        ge=0,
        le=180,
        description="design shape: each object turned from its upright pose (triangle and star pointing up, square "
        "and cross on a side) by a uniform angle in ±rotation degrees (180: any orientation)",
    )
    same_colour_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="design shape: the share of images whose objects all have one colour (else all differ)",
    )

    @model_validator(mode="after")
    def _objects_range(self) -> ShapesParams:
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects ({self.min_objects}) must not exceed max_objects ({self.max_objects})")
        return self


class CocoSplit(Group):
    annotations: str
    images: str
    captions: str | None = Field(
        None,
        description="a COCO captions file (captions_val2017.json) joined by image id: "
        "each image's first caption (by annotation id)",
    )


class CocoParams(Group):
    splits: dict[str, CocoSplit]
    background: bool = Field(True, description="unlabelled pixels are a 'background' class (else ignored)")


class MaskFolderSplit(Group):
    images: str
    labels: str
    ids_file: str | None = Field(None, description="text file of sample ids, one a line (default: every image)")
    captions: str | None = Field(None, description="JSON file mapping sample ids to captions")


class MaskFolderParams(Group):
    splits: dict[str, MaskFolderSplit]
    class_names: list[str]
    reduce_zero_label: bool = False
    image_suffix: str = Field(
        ".jpg", description="what follows the sample id in an image's file name (Cityscapes: _leftImg8bit.png)"
    )
    label_suffix: str = Field(".png", description="what follows the sample id in its label's file name")
    fallback_label_suffix: str | None = Field(
        None,
        description=(
            "a second label file tried when the first is absent (Cityscapes as distributed: _gtFine_labelIds.png)"
        ),
    )
    label_map: dict[int, int] | None = Field(
        None,
        description=(
            "ids of the label files (after reduce_zero_label) → class ids; unlisted ids are ignored (COCO-Stuff: 171 → "
            "27)"
        ),
    )
    fallback_label_map: dict[int, int] | None = Field(
        None,
        description=(
            "ids of the fallback labels → class ids; unlisted ids are ignored (Cityscapes: labelIds → the 19 train ids)"
        ),
    )


class DataParams(Group):
    source: Literal["shapes", "coco", "mask_folder"]
    root: str = Field(description="directory of the raw dataset (Shapes is generated there)")
    shapes: ShapesParams | None = None
    coco: CocoParams | None = None
    mask_folder: MaskFolderParams | None = None

    @model_validator(mode="after")
    def _source_section(self) -> DataParams:
        if getattr(self, self.source) is None:
            raise ValueError(f"data.source is '{self.source}' but the section data.{self.source} is missing")
        return self
