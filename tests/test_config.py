import pytest
import yaml
from conftest import REPO, base_params

from seg4diff.config import ParamsError, load_params, parse_params


def test_repository_params_validate():
    params = load_params(REPO / "params.yaml")
    assert params.prepare.resolution % 16 == 0
    assert params.tracking.experiment == "seg4diff"


def test_unknown_key_names_its_dotted_path(tmp_path):
    raw = base_params(tmp_path)
    raw["data"]["shapes"]["num_trian"] = 5
    with pytest.raises(ParamsError, match=r"data\.shapes\.num_trian: unknown key"):
        parse_params(raw)


def test_wrong_type_names_key_expectation_and_value(tmp_path):
    raw = base_params(tmp_path)
    raw["prepare"]["max_samples"] = "32"
    with pytest.raises(ParamsError) as error:
        parse_params(raw)
    assert "prepare.max_samples.int: Input should be a valid integer" in str(error.value)
    assert "(got '32')" in str(error.value)


def test_resolution_must_be_multiple_of_16(tmp_path):
    raw = base_params(tmp_path)
    raw["prepare"]["resolution"] = 40
    with pytest.raises(ParamsError, match=r"prepare\.resolution: .*multiple of 16, got 40"):
        parse_params(raw)


def test_resolution_is_a_size_or_height_and_width_and_labels_native_or_a_size(tmp_path):
    raw = base_params(tmp_path)
    raw["prepare"] |= {"resolution": [512, 1024], "label_resolution": "native"}
    assert parse_params(raw).prepare.size == (512, 1024)
    raw["prepare"]["resolution"] = [512, 1000]
    with pytest.raises(ParamsError, match=r"prepare\.resolution: .*multiple of 16, got 1000"):
        parse_params(raw)
    raw["prepare"] |= {"resolution": 32, "label_resolution": "full"}
    with pytest.raises(ParamsError, match=r"prepare\.label_resolution"):
        parse_params(raw)


def test_selected_source_needs_its_section(tmp_path):
    raw = base_params(tmp_path)
    raw["data"]["source"] = "coco"
    with pytest.raises(ParamsError, match=r"data\.coco is missing"):
        parse_params(raw)


def test_overrides_merge_and_are_validated(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(base_params(tmp_path)))
    assert load_params(path, {"data": {"shapes": {"seed": 9}}}).data.shapes.seed == 9
    assert load_params(path).data.shapes.num_train == 12
    with pytest.raises(ParamsError, match=r"data\.shapes\.seed"):
        load_params(path, {"data": {"shapes": {"seed": 1.5}}})


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ParamsError, match="nothere.yaml: params file not found"):
        load_params(tmp_path / "nothere.yaml")
