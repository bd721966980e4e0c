"""A split divided into a selection part and a report part by a hash of each image id."""

import numpy as np
import pytest
from pydantic import ValidationError

from seg4diff.config import DataParams, PrepareParams, ShapesParams
from seg4diff.data.partition import part_of, prepared_names, source_split
from seg4diff.data.prepare import build_source, prepare_split
from seg4diff.data.prepared import open_prepared
from seg4diff.data.shapes import generate_shapes


def test_the_part_of_an_image_is_a_fixed_function_of_its_id():
    ids = [str(i) for i in range(20_000)]
    parts = [part_of(i, 0.2) for i in ids]
    share = parts.count("select") / len(ids)
    assert abs(share - 0.2) < 0.01  # a hash, so the share holds on any set of ids
    assert parts == [part_of(i, 0.2) for i in reversed(ids)][::-1]  # independent of order
    assert part_of("000000139", 0.2) == part_of("000000139", 0.2)
    # a larger share only moves images into the selection part, never out of it
    assert all(part_of(i, 0.5) == "select" for i, p in zip(ids, parts) if p == "select")


def test_prepared_names_and_their_source():
    partition = {"val": 0.2}
    assert prepared_names(["train", "val"], partition) == ["train", "val-select", "val-report"]
    assert source_split("val-report", partition) == ("val", "report")
    assert source_split("train", partition) == ("train", None)
    assert source_split("my-select", partition) == ("my-select", None)  # only partitioned splits have parts
    with pytest.raises(ValidationError, match="partition names splits \\['test'\\]"):
        PrepareParams(splits=["val"], partition={"test": 0.2})
    with pytest.raises(ValidationError, match="strictly between 0 and 1"):
        PrepareParams(splits=["val"], partition={"val": 1.0})


def test_the_parts_are_disjoint_and_together_the_whole_split(tmp_path):
    shapes = ShapesParams(image_size=32, num_train=1, num_val=40, num_test=1, seed=5)
    generate_shapes(tmp_path / "raw", shapes, ["val"])
    source = build_source(DataParams(source="shapes", root=str(tmp_path / "raw"), shapes=shapes), ["val"])
    params = PrepareParams(splits=["val"], partition={"val": 0.3}, resolution=32, label_resolution=32)
    stores = {}
    for name in params.prepared:
        prepare_split(source, name, tmp_path / f"{name}.zarr", params, progress=False)
        stores[name] = open_prepared(tmp_path / f"{name}.zarr")
    select, report = (set(map(str, stores[n]["source_id"].values.tolist())) for n in ("val-select", "val-report"))
    file_of = {i: source.load("val", i).source_id for i in source.sample_ids("val")}  # by sample id: the hashed id
    assert select.isdisjoint(report) and select | report == set(file_of.values())
    assert select == {file_of[i] for i in file_of if part_of(i, 0.3) == "select"} and 0 < len(select) < len(report)
    assert stores["val-select"].attrs["source_split"] == "val" and stores["val-report"].attrs["part"] == "report"
    whole = open_prepared(prepare_whole(source, tmp_path))
    index = {str(i): k for k, i in enumerate(whole["source_id"].values.tolist())}
    for k, sample_id in enumerate(stores["val-report"]["source_id"].values.tolist()):
        np.testing.assert_array_equal(stores["val-report"]["image"].values[k], whole["image"].values[index[sample_id]])


def prepare_whole(source, tmp_path):
    params = PrepareParams(splits=["val"], resolution=32, label_resolution=32)
    prepare_split(source, "val", tmp_path / "val.zarr", params, progress=False)
    return tmp_path / "val.zarr"
