"""The command line shared by every flow: settings merged in order, validated at once, errors in one line."""

import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from seg4diff.config import ParamsError, load_params, parse_assignments


def test_assignments_become_nested_overrides_with_yaml_values():
    overrides = parse_assignments(
        [
            "extract.sigmas=[0.5, 0.7]",
            "extract.layers=null",
            "model.path=some/dir",
            "finetune.lr=3e-4",
            "prompt.separator= ",
        ]
    )
    assert overrides == {
        "extract": {"sigmas": [0.5, 0.7], "layers": None},
        "model": {"path": "some/dir"},
        "finetune": {"lr": 3e-4},
        "prompt": {"separator": " "},
    }
    for bad in ("extract.sigmas", "=3", "extract..sigmas=1", "extract.sigmas=[0.5"):
        with pytest.raises(ParamsError, match="--set"):
            parse_assignments([bad])


def test_presets_merge_in_order_then_sets_win(tmp_path):
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(yaml.safe_dump({"extract": {"sigmas": [0.3], "batch_size": 4}, "finetune": {"steps": 10}}))
    second.write_text(yaml.safe_dump({"extract": {"sigmas": [0.9]}}))
    params = load_params(REPO / "params.yaml", {"finetune": {"steps": 7}}, [str(first), str(second)])
    assert params.extract.sigmas == [0.9] and params.extract.batch_size == 4 and params.finetune.steps == 7
    assert params.extract.max_tokens == 8  # untouched settings keep params.yaml's value
    with pytest.raises(ParamsError, match="^unknown preset 'nope': choose a shipped one"):
        load_params(REPO / "params.yaml", presets=["nope"])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args, message",
    [
        (("flows.select", "--set", "select.rulez=1"), "select.rulez: unknown key: not a setting of this group"),
        (
            ("flows.extract", "--set", "extract.sigmas=[2.0]"),
            "extract.sigmas: Value error, every sigma must lie in (0, 1]",
        ),
        (("flows.score", "--preset", "no-such-preset"), "unknown preset 'no-such-preset'"),
        (("flows.pipeline", "--stages", "extrakt"), "invalid choice: 'extrakt'"),
    ],
)
def test_a_wrong_setting_stops_every_flow_before_it_runs_in_one_line(args, message):
    result = _cli(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert message in lines[-1] and "Traceback" not in result.stderr
    assert "Flow run" not in result.stdout + result.stderr  # nothing ran, no server was started


def test_help_lists_the_shared_options():
    for module in ("flows.prepare", "flows.pipeline"):
        result = _cli(module, "--help")
        assert result.returncode == 0
        assert all(option in result.stdout for option in ("--params FILE", "--preset NAME", "--set KEY=VALUE"))
    assert "--stages" in _cli("flows.pipeline", "--help").stdout


def test_presets_merge_into_a_params_file_for_dvc(tmp_path):
    from seg4diff.config import merged_yaml

    text = merged_yaml(REPO / "params.yaml", {"data": {"root": "/data/VOC2012"}}, ["sd3-medium", "voc20"])
    (tmp_path / "params.yaml").write_text(text)
    merged = load_params(tmp_path / "params.yaml")
    assert merged == load_params(REPO / "params.yaml", {"data": {"root": "/data/VOC2012"}}, ["sd3-medium", "voc20"])
    assert (
        merged.model.path == "stabilityai/stable-diffusion-3-medium-diffusers" and merged.data.source == "mask_folder"
    )
