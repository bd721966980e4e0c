"""A stage that DVC calls up to date still gets its MLflow run: params, the numbers of its metrics files, its
outputs."""

import json

import mlflow
from conftest import base_params

from flows.tracking import log_reused_stage
from seg4diff.config import parse_params


def test_reused_stage_run_logs_what_dvc_yaml_declares(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/score.json").write_text(
        json.dumps({"image_to_text.best_miou": 0.634, "note": "text", "nested": {"x": 2}})
    )
    (tmp_path / "results").mkdir()
    (tmp_path / "results/layer_scores.csv").write_text("layer,value\n0,0.5\n")
    spec = {
        "params": ["score", "prompt", "extract.output"],
        "outs": [{"results/layer_scores.csv": {"cache": False}}],
        "metrics": [{"metrics/score.json": {"cache": False}}],
        "plots": ["results/absent.csv"],
    }
    params = parse_params(base_params(tmp_path))
    log_reused_stage("score", params, spec)

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["seg4diff"], output_format="list")
    assert run.info.run_name == "score" and run.data.tags["reused"] == "true"
    assert run.data.metrics == {"image_to_text.best_miou": 0.634, "nested.x": 2.0}
    assert {"score.bootstrap_resamples", "prompt.separator", "extract.output"} <= set(run.data.params)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert artifacts == {"layer_scores.csv", "score.json"}
