"""The stage flows chained on a tiny configuration under Prefect's test harness: real files, MLflow runs, artifacts."""
import json

import mlflow
import pandas as pd
import yaml

from conftest import base_params


def test_prepare_pretrain_extract_score_select(prefect_harness, tmp_path, monkeypatch):
    from flows.extract import extract
    from flows.prepare import prepare
    from flows.pretrain import pretrain
    from flows.score import score
    from flows.select import select
    from seg4diff.attention_store import open_attention

    monkeypatch.chdir(tmp_path)
    raw = base_params(tmp_path)
    raw["model"] = {"path": str(tmp_path / "organism")}
    raw["pretrain"] = {"output": str(tmp_path / "organism"), "steps": 30, "batch_size": 8, "warmup_steps": 5, "log_every": 10,
                       "architecture": {"num_layers": 3, "num_attention_heads": 2, "attention_head_dim": 8, "text_length": 12},
                       "num_samples": 4, "sample_steps": 2}
    raw["extract"] = {"split": "val", "output": str(tmp_path / "attention.zarr"), "sigmas": [0.5, 0.7], "max_tokens": 8,
                      "batch_size": 2, "workers": 2}
    raw["score"] = {"bootstrap_resamples": 50, "examples": 2, "output": str(tmp_path / "results/layer_scores.csv")}
    raw["select"] = {"output": str(tmp_path / "results/expert.json")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))

    prepare()
    checks = pretrain()
    assert checks["final_train_loss"] < 1.5 and 0 <= checks["colour_agreement"] <= 1
    summary = extract()
    assert summary["computed"] == 4 and summary["samples"] == 4
    store = open_attention(tmp_path / "attention.zarr")
    assert store.image_to_text.shape == (4, 3, 2, 2, 8, 16, 16) and bool(store.complete.all())
    assert extract()["computed"] == 0  # unchanged params: nothing recomputed

    headline = score()
    scores = pd.read_csv(tmp_path / "results/layer_scores.csv")
    miou = scores[(scores.metric == "miou") & (scores["head"] == "mean")]
    assert len(miou) == 2 * 3 * 2 and miou.value.between(0, 1).all() and (miou.ci_low <= miou.value + 1e-9).all()
    assert set(scores.metric) == {"miou", "image_to_text_mass", "image_entropy", "text_entropy"}
    expert = select()
    assert expert == json.loads((tmp_path / "results/expert.json").read_text())
    best = miou[miou.direction == "image_to_text"].sort_values("value").iloc[-1]
    assert (expert["layer"], expert["timestep"]) == (best.layer, best.timestep)
    assert abs(headline["image_to_text.best_miou"] - best.value) < 1e-9

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["seg4diff"], output_format="list")}
    assert set(runs) == {"prepare", "pretrain", "extract", "score", "select"}
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(runs["score"].info.run_id)}
    assert {"layer_curve.png", "example_maps.png", "layer_timestep_image_to_text.png", "layer_head_image_to_text.png"} <= artifacts
