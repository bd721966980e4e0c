"""Stores that cannot silently go wrong: provenance (re-prepared data is re-extracted, a store made from another
prepared split is refused), integrity (a missing, truncated or altered chunk is refused naming the sample and file,
and recomputed by the next extract) and ownership (a user's folder is never deleted, a store of other settings is
kept, not destroyed)."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import base_params

from seg4diff.config import parse_params
from seg4diff.data.attention_store import completed, damaged_samples, kept_path, open_attention
from seg4diff.data.prepared import prepared_split, split_path
from seg4diff.errors import ConfigError, DataError
from seg4diff.evaluation.scoring import open_scored
from tasks.extract import extract_range_task, plan_extraction_task
from tasks.prepare import generate_shapes_task, prepare_split_task, publish_splits_task
from tasks.score import score_layers_task


def _params(tmp_path: Path, model: Path, **extract):
    raw = base_params(tmp_path)
    raw["model"] = {"path": str(model), "text_length": 24}
    raw["prepare"]["splits"] = ["val"]
    raw["extract"] = {
        "output": str(tmp_path / "attention.zarr"),
        "sigmas": [0.5],
        "layers": [0, 1],
        "max_tokens": 48,
        "batch_size": 2,
        "diagnostics": False,
        **extract,
    }
    return parse_params(raw)


def _prepare(params) -> None:
    generate_shapes_task.fn(params)
    for split in params.prepare.splits:
        prepare_split_task.fn(params, split)
    publish_splits_task.fn(params)


def _extract(params) -> dict:
    plan = plan_extraction_task.fn(params)
    computed = sum(
        extract_range_task.fn(params, start, stop, plan["sigmas"], plan["layers"])["computed"]
        for start, stop in plan["ranges"]
    )
    return {**plan, "computed": computed}


@pytest.fixture
def extracted(tiny_model_dirs, tmp_path):
    params = _params(tmp_path, tiny_model_dirs["sd3"])
    _prepare(params)
    _extract(params)
    return params


def _shard(params, sample: int, name: str = "image_to_text") -> Path:
    return Path(params.extract.output) / name / "c" / str(sample) / "0" / "0" / "0" / "0" / "0" / "0"


def test_re_prepared_data_is_re_extracted_and_the_old_store_kept_not_deleted(extracted, capsys):
    params = extracted
    before = open_attention(params.extract.output).load()
    annotations = Path(params.data.root) / "annotations" / "val.json"
    coco = json.loads(annotations.read_text())
    first = coco["categories"][0]["id"]
    coco["annotations"] = [{**a, "category_id": first} for a in coco["annotations"]]  # every object → one class
    annotations.write_text(json.dumps(coco))
    for split in params.prepare.splits:  # prepare again (its generator would rewrite the raw data)
        prepare_split_task.fn(params, split)
    publish_splits_task.fn(params)

    with pytest.raises(DataError, match=r"extracted from another version of the prepared split .*val.zarr"):
        open_scored(params.extract.output, params.prepare.output, None)  # score refuses old attention, new labels
    again = _extract(params)
    assert again["computed"] == 4 and again["already_complete"] == 0  # recomputed, not reused
    after = open_attention(params.extract.output).load()
    name = coco["categories"][0]["name"]
    assert {str(p) for p in after.prompt.values} == {name}  # the prompts of the new classes
    assert list(before.prompt.values) != list(after.prompt.values)
    kept = kept_path(Path(params.extract.output), before.attrs["fingerprint"])
    assert "was kept at" in capsys.readouterr().out and open_attention(kept).load().identical(before)
    open_scored(params.extract.output, params.prepare.output, None)  # the new store matches the new labels


def test_changing_a_setting_back_resumes_the_kept_store_instead_of_recomputing(extracted, capsys):
    params = extracted
    first = open_attention(params.extract.output).load()
    other = params.model_copy(update={"extract": params.extract.model_copy(update={"sigmas": [0.7]})})
    assert _extract(other)["computed"] == 4
    other_fingerprint = open_attention(params.extract.output).attrs["fingerprint"]
    back = _extract(params)
    assert back["computed"] == 0 and back["already_complete"] == 4
    assert "resuming the store kept earlier for these settings" in capsys.readouterr().out
    assert open_attention(params.extract.output).load().identical(first)
    kept = kept_path(Path(params.extract.output), other_fingerprint)
    assert list(open_attention(kept).sigma.values) == [0.7]  # the other settings' store is kept in its turn


@pytest.mark.parametrize("damage", ["delete", "flip", "truncate"])
def test_a_damaged_shard_is_refused_naming_sample_and_file_then_recomputed_bit_identical(extracted, damage):
    params = extracted
    reference = open_attention(params.extract.output).load()
    shard = _shard(params, 1)
    data = shard.read_bytes()
    if damage == "delete":
        shard.unlink()
    elif damage == "flip":
        middle = len(data) // 3
        shard.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 400]) + data[middle + 400 :])
    else:
        shard.write_bytes(data[: len(data) // 2])
    assert list(damaged_samples(Path(params.extract.output))) == [1]
    with pytest.raises(DataError, match=rf"1 damaged sample\(s\) \(sample 1: {shard}"):
        score_layers_task.fn(params)  # the score stage: refused when opened (missing) or when read (altered)
    repaired = _extract(params)
    assert repaired["damaged"] == 1 and repaired["computed"] == 2  # the damaged sample and its batch (batch_size 2)
    assert completed(Path(params.extract.output)).all()
    assert open_attention(params.extract.output).load().identical(reference)
    score_layers_task.fn(params)


def test_a_missing_small_chunk_is_found_too(extracted):
    params = extracted
    prompt = Path(params.extract.output) / "prompt" / "c" / "2"
    prompt.unlink()  # zarr alone would read "" and go on
    assert list(damaged_samples(Path(params.extract.output))) == [2]


def test_extract_output_pointing_at_a_users_folder_is_refused_and_the_folder_kept(tiny_model_dirs, tmp_path):
    params = _params(tmp_path, tiny_model_dirs["sd3"], output=str(tmp_path / "mine"))
    _prepare(params)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match=r"^extract.output: .*mine holds files seg4diff did not write"):
        plan_extraction_task.fn(params)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work"


def test_prepare_never_replaces_a_folder_it_did_not_write(tmp_path):
    params = parse_params(base_params(tmp_path))
    target = split_path(params.prepare.output, "val")
    target.mkdir(parents=True)
    (target / "notes.txt").write_text("mine")
    generate_shapes_task.fn(params)
    with pytest.raises(ConfigError, match=r"^prepare.output: .*val.zarr holds files seg4diff did not write"):
        prepare_split_task.fn(params, "val")
    assert (target / "notes.txt").read_text() == "mine"


def test_an_interrupted_prepare_publishes_no_split_and_a_store_of_other_settings_is_refused(tmp_path):
    params = parse_params(base_params(tmp_path))
    _prepare(params)
    old = {s: prepared_split(params, s).attrs["digest"] for s in params.prepare.splits}
    changed = params.model_copy(
        update={"data": params.data.model_copy(update={"shapes": params.data.shapes.model_copy(update={"seed": 9})})}
    )
    generate_shapes_task.fn(changed)
    prepare_split_task.fn(changed, "train")  # the run is killed before val and before publishing
    assert {s: prepared_split(params, s).attrs["digest"] for s in params.prepare.splits} == old  # nothing mixed
    with pytest.raises(DataError, match=r"train.zarr was made with other data/prepare settings .*re-run prepare"):
        prepared_split(changed, "train")
    _prepare(changed)
    assert prepared_split(changed, "train").attrs["digest"] != old["train"]


def test_an_empty_split_and_an_all_skipped_split_say_which(tmp_path):
    from seg4diff.data.prepared import PreparedWriter

    writer = PreparedWriter(tmp_path / "val.zarr", ["a"], False, (32, 32), 32, (32, 32), {"split": "val"})
    with pytest.raises(DataError, match="^split 'val' of the dataset source lists no samples"):
        writer.finish({"total": 0, "kept": 0, "skipped": {}})
    with pytest.raises(DataError, match=r"^split 'val': all 14 samples were skipped \(\{'unreadable_image': 14\}\)"):
        writer.finish({"total": 14, "kept": 0, "skipped": {"unreadable_image": 14}})


def test_kept_samples_and_skip_reasons_reach_the_terminal(tmp_path):
    from collections import Counter

    from seg4diff.data.prepare import SplitSummary, skip_line

    summary = SplitSummary("val", total=14, kept=5, skipped=Counter(unreadable_image=6, size_mismatch=3), captions=5)
    summary.skipped_examples = {"unreadable_image": "12: cannot identify image file"}
    assert skip_line(summary) == (
        "prepare val: kept 5 of 14 samples; SKIPPED 9 (unreadable_image: 6, size_mismatch: 3), "
        "e.g. 12: cannot identify image file"
    )
    assert skip_line(SplitSummary("val", total=3, kept=3, captions=3)) == "prepare val: kept 3 of 3 samples"


def test_the_prepared_digest_is_the_content_same_data_same_digest_one_pixel_another(tmp_path):
    from PIL import Image

    params = parse_params(base_params(tmp_path))
    _prepare(params)
    first = prepared_split(params, "val").attrs["digest"]
    for split in params.prepare.splits:
        prepare_split_task.fn(params, split)
    publish_splits_task.fn(params)
    assert prepared_split(params, "val").attrs["digest"] == first and len(first) == 16
    image = sorted((Path(params.data.root) / "images" / "val").iterdir())[0]
    pixels = np.asarray(Image.open(image)).copy()
    pixels[0, 0] ^= 0xFF
    Image.fromarray(pixels).save(image)
    prepare_split_task.fn(params, "val")
    publish_splits_task.fn(params.model_copy(update={"prepare": params.prepare.model_copy(update={"splits": ["val"]})}))
    assert prepared_split(params, "val").attrs["digest"] != first
