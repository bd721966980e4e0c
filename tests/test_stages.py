"""The one stage skeleton: settings and cross-field checks before the body, its MLflow run, its metrics file, errors."""

import json

import mlflow
import pytest
import yaml
from conftest import base_params

from flows.stages import REGISTRY, STAGES, Outcome, StageError, stage_flow
from seg4diff.config import check_stage, parse_params
from seg4diff.errors import ConfigError, DataError


def _runs(tmp_path) -> dict:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["seg4diff"], output_format="list")}


def test_the_skeleton_runs_the_body_in_its_mlflow_run_and_writes_its_metrics_file(
    prefect_harness, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(base_params(tmp_path)))
    seen = {}

    @stage_flow("score")
    def body(params, run):
        """Scores nothing."""
        seen["active"] = mlflow.active_run().info.run_id == run.info.run_id
        seen["resamples"] = params.score.bootstrap_resamples
        return Outcome({"returned": 1}, metrics={"best": 0.123456789})

    assert body.name == "score" and body(overrides={"score": {"bootstrap_resamples": 20}}) == {"returned": 1}
    assert seen == {"active": True, "resamples": 20}
    assert json.loads((tmp_path / STAGES["score"].metrics).read_text()) == {"best": 0.123457}  # 6 significant digits
    run = _runs(tmp_path)["score"]
    assert run.info.status == "FINISHED" and run.data.params["score.bootstrap_resamples"] == "20"
    tracked = (tmp_path / STAGES["score"].metrics).read_text()
    body(overrides={"score": {"output": str(tmp_path / "elsewhere/scores.csv")}})  # a redirected output …
    assert (tmp_path / STAGES["score"].metrics).read_text() == tracked  # … leaves the tracked metrics file alone
    assert json.loads((tmp_path / "elsewhere/score.metrics.json").read_text()) == {"best": 0.123457}


def test_the_skeleton_keeps_setting_errors_and_names_the_stage_of_any_other(prefect_harness, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(base_params(tmp_path)))
    ran = []

    def failing(error):
        @stage_flow("explore")
        def body(params, run):
            ran.append(error)
            raise error

        return body

    with pytest.raises(DataError, match="^corrupt image$"):  # one line, unchanged
        failing(DataError("corrupt image"))()
    with pytest.raises(StageError, match="stage 'explore' failed: boom"):
        failing(ValueError("boom"))()
    assert len(ran) == 2 and _runs(tmp_path)["explore"].info.status == "FAILED"

    @stage_flow("evaluate")
    def evaluate(params, run):
        ran.append("evaluate")

    with pytest.raises(ConfigError, match=r"evaluate.split 'test' is where evaluate.val_split \(thresholds"):
        evaluate(overrides={"evaluate": {"val_split": "test"}})
    assert len(ran) == 2  # refused before the body (and before any model load)


def test_stage_checks_refuse_what_a_stage_cannot_use_and_only_for_that_stage(tmp_path):
    raw = base_params(tmp_path)
    raw["evaluate"] = {"split": "val", "val_split": "val"}  # as a dataset preset with one split used to set it
    params = parse_params(raw)
    for stage in STAGES:
        if stage == "evaluate":
            with pytest.raises(ConfigError, match="evaluate.split 'val' is where extract.split") as refused:
                check_stage(params, stage)
            assert "evaluate.val_split (thresholds" in str(refused.value) and "prepare.partition" in str(refused.value)
        else:
            check_stage(params, stage)  # prepare, extract, score … can still run


def test_no_stage_reports_a_number_on_the_images_a_choice_was_made_on(tmp_path):
    raw = base_params(tmp_path)
    raw["causal"] = {"split": "val"}  # where the expert is chosen (extract.split)
    with pytest.raises(ConfigError, match=r"causal.split 'val' is where extract.split \(the expert block"):
        check_stage(parse_params(raw), "causal")
    raw["causal"] = {"split": "test"}
    check_stage(parse_params(raw), "causal")
    # a benchmark with one split: divided, and every stage reads the part its job allows
    raw["prepare"] |= {"splits": ["val"], "partition": {"val": 0.25}}
    raw["extract"] = {"split": "val-select"}
    raw["causal"] = {"split": "val-report"}
    raw["evaluate"] = {"split": "val-report", "val_split": "val-select"}
    params = parse_params(raw)
    assert params.prepare.prepared == ["val-select", "val-report"]
    for stage in ("extract", "causal", "evaluate", "score", "select"):
        check_stage(params, stage)
    with pytest.raises(ConfigError, match=r"extract.split reads split 'val', which prepare does not prepare"):
        check_stage(parse_params(raw | {"extract": {"split": "val"}}), "extract")


def test_stage_checks_name_a_split_that_is_not_prepared_and_a_sigma_that_is_not_stored(tmp_path):
    raw = base_params(tmp_path)
    raw["prepare"]["splits"] = ["val", "test"]
    raw["score"] = {"sigmas": [0.3, 0.9]}
    raw["select"] = {"force_sigma": 0.2}
    params = parse_params(raw)  # extract.sigmas: [0.1, 0.3, 0.5, 0.7] by default
    with pytest.raises(ConfigError, match=r"finetune.split reads split 'train', which prepare does not"):
        check_stage(params, "finetune")
    with pytest.raises(ConfigError, match=r"score.sigmas \[0.9\] are not among extract.sigmas"):
        check_stage(params, "score")
    with pytest.raises(ConfigError, match=r"select.force_sigma 0.2 is not a scored sigma \[0.3, 0.9\]"):
        check_stage(params, "select")
    check_stage(params, "extract")  # val is prepared
    check_stage(params, "evaluate")  # test and val are prepared and differ


def test_the_registry_names_each_stage_once_in_pipeline_order():
    names = [stage.name for stage in REGISTRY]
    assert names == [
        "prepare",
        "pretrain",
        "extract",
        "score",
        "select",
        "causal",
        "finetune",
        "evaluate",
        "readouts",
        "explore",
    ]
    assert [name for name, stage in STAGES.items() if stage.sharded] == ["extract", "evaluate"]
    assert all(stage.flow().name == stage.name for stage in REGISTRY)
