"""The stage flows chained on a tiny configuration under Prefect's test harness: real files, MLflow runs, artifacts."""

import json

import mlflow
import pandas as pd
import pytest
import yaml
from conftest import base_params


@pytest.mark.slow
def test_prepare_pretrain_extract_score_select(prefect_harness, tmp_path, monkeypatch):
    from flows.causal import causal
    from flows.evaluate import evaluate
    from flows.explore import explore
    from flows.extract import extract
    from flows.finetune import finetune
    from flows.prepare import prepare
    from flows.pretrain import pretrain
    from flows.runners import for_stage
    from flows.score import score
    from flows.select import select
    from seg4diff.config import load_params
    from seg4diff.data.attention_store import open_attention

    monkeypatch.chdir(tmp_path)
    raw = base_params(tmp_path)
    raw["model"] = {"path": str(tmp_path / "organism")}
    raw["pretrain"] = {
        "output": str(tmp_path / "organism"),
        "steps": 30,
        "batch_size": 8,
        "warmup_steps": 5,
        "log_every": 10,
        "architecture": {"num_layers": 3, "num_attention_heads": 2, "attention_head_dim": 8, "text_length": 12},
        "num_samples": 4,
        "sample_steps": 2,
    }
    raw["extract"] = {
        "split": "val",
        "output": str(tmp_path / "attention.zarr"),
        "sigmas": [0.5, 0.7],
        "max_tokens": 8,
        "batch_size": 2,
        "workers": 2,
    }
    raw["score"] = {"bootstrap_resamples": 50, "examples": 2, "output": str(tmp_path / "results/layer_scores.csv")}
    raw["select"] = {"output": str(tmp_path / "results/expert.json")}
    raw["causal"] = {
        "layers": [0, 2],
        "perturbations": ["blur", "shuffle"],
        "captions": 4,
        "generation_steps": 2,
        "flow_samples": 4,
        "bootstrap_resamples": 100,
        "output": str(tmp_path / "results/causal.csv"),
    }
    raw["explore"] = {"samples": 3, "output": str(tmp_path / "results/explorer.html")}
    raw["finetune"] = {
        "steps": 4,
        "batch_size": 2,
        "rank": 4,
        "alpha": 4,
        "checkpoint_every": 2,
        "validate_every": 2,
        "validation_samples": 4,
        "work_dir": str(tmp_path / "ft"),
        "output": str(tmp_path / "lora"),
    }
    raw["evaluate"] = {
        "batch_size": 4,
        "gallery": 2,
        "generation_samples": 2,
        "output": str(tmp_path / "metrics/evaluate.json"),
    }
    raw["orchestration"] = {"local_workers": 2}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))

    prepare()
    checks = pretrain()
    assert checks["final_train_loss"] < 1.5 and 0 <= checks["shape_recall"] <= 1
    extract_on_dask = for_stage(extract, load_params())
    assert extract_on_dask.task_runner.__class__.__name__ == "DaskTaskRunner"
    summary = extract_on_dask()  # two shards on a 2-worker local Dask cluster
    assert summary["computed"] == 4 and summary["samples"] == 4
    store = open_attention(tmp_path / "attention.zarr")
    assert store.image_to_text.shape == (4, 3, 2, 2, 8, 16, 16) and bool(store.complete.all())
    assert extract_on_dask()["computed"] == 0  # unchanged params: nothing recomputed
    sequential = _sequential_store(tmp_path)
    assert open_attention(sequential).load().identical(store.load())  # bit-identical to one worker

    headline = score()
    scores = pd.read_csv(tmp_path / "results/layer_scores.csv")
    miou = scores[(scores.metric == "miou") & (scores["head"] == "mean")]
    assert len(miou) == 2 * 3 * 2 and miou.value.between(0, 1).all() and (miou.ci_low <= miou.value + 1e-9).all()
    assert set(scores.metric) == {"miou", "image_to_text_mass", "image_entropy", "text_entropy"}
    expert = select()
    assert expert == json.loads((tmp_path / "results/expert.json").read_text())
    best = miou[miou.direction == "image_to_text"].sort_values("value").iloc[-1]
    assert (expert["layer"], expert["sigma"]) == (best.layer, best.sigma)
    assert (headline["image_to_text.best_layer"], headline["image_to_text.best_sigma"]) == (best.layer, best.sigma)

    summary = causal()
    table = pd.read_csv(tmp_path / "results/causal.csv")
    assert set(table.layer) == {0, 2} and set(table.perturbation) == {"blur", "shuffle"}
    assert {
        "caption_colour_agreement",
        "object_recall",
        "shape_recall",
        "colour_recall",
        "flow_loss_increase",
        "perturbation_l1",
    } == set(table.metric)
    scored = table[table.metric != "perturbation_l1"]
    assert (scored.ci_low <= scored.delta + 1e-9).all() and (scored.delta <= scored.ci_high + 1e-9).all()
    assert (table[table.metric == "perturbation_l1"].value > 0).all()
    assert summary["shuffle.flow_loss_increase"]["layers"] == 2 and (tmp_path / "results/causal.metrics.json").exists()
    page = explore()
    assert page["samples"] == 3 and page["layers"] == 3 and page["heads"] == 3 and page["sigmas"] == 2
    html = (tmp_path / "results/explorer.html").read_text()
    recall = table[table.metric == "object_recall"]
    kind = (
        recall.groupby("perturbation").delta.apply(lambda d: d.abs().max()).idxmax()
    )  # the clearest contrast is drawn
    assert (
        f'"expert":{{"layer":{expert["layer"]},' in html
        and '"causal":[{"layer":0,"metric":' + json.dumps(f"{kind}: Δ object_recall") in html
    )

    best = finetune()
    assert 0 <= best["val_miou"] <= 1 and (tmp_path / "lora/adapter_model.safetensors").exists()
    metrics = for_stage(evaluate, load_params())()
    assert set(metrics) == {"base", "finetuned", "expert", "sigma", "finetuned_vs_base", "protocol"}
    assert (
        metrics["protocol"]["reported_on"]["split"] == "test"
        and metrics["protocol"]["expert_chosen_on"]["split"] == "val"
    )
    for variant in ("base", "finetuned"):
        assert set(metrics[variant]) == {"gt_classes", "vocabulary", "unsupervised_per_image_matching", "fidelity"}
        low, high = metrics[variant]["gt_classes"]["miou_ci"]
        assert low <= metrics[variant]["gt_classes"]["miou"] <= high
        assert (
            0 <= metrics[variant]["gt_classes"]["miou"] <= 1 and metrics[variant]["fidelity"]["heldout_flow_loss"] > 0
        )
    for protocol, d in metrics["finetuned_vs_base"].items():
        assert d["ci"][0] <= d.get("delta_miou", d.get("delta")) <= d["ci"][1], protocol
    chosen = metrics["base"]["unsupervised_per_image_matching"]
    assert chosen["val_miou_by_threshold"][str(chosen["kl_threshold"])] == max(chosen["val_miou_by_threshold"].values())
    for variant in ("base", "finetuned"):  # the GT-class predictor is the one with the best val mIoU, for each model
        oracle = metrics[variant]["gt_classes"]
        curve = oracle["val_miou_by_reading"]  # every candidate reading; the chosen one is its best
        assert {label.split()[0] for label in curve} == {"probability", "logit"} and "val_miou" not in oracle
        chosen_label = "logit" if oracle["predictor"] == "logit" else f"probability {oracle['background_threshold']:g}"
        assert curve[chosen_label] == max(curve.values())
    assert "vs_runner_up" in expert and expert["vs_runner_up"]["n"] == 4
    assert json.loads((tmp_path / "metrics/evaluate.json").read_text()) == metrics

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["seg4diff"], output_format="list")}
    assert set(runs) == {
        "prepare",
        "pretrain",
        "extract",
        "score",
        "select",
        "causal",
        "explore",
        "finetune",
        "evaluate",
    }
    assert "explorer.html" in {a.path for a in mlflow.MlflowClient().list_artifacts(runs["explore"].info.run_id)}
    assert "gallery.png" in {a.path for a in mlflow.MlflowClient().list_artifacts(runs["evaluate"].info.run_id)}
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(runs["score"].info.run_id)}
    assert {
        "layer_curve.png",
        "example_maps.png",
        "layer_sigma_image_to_text.png",
        "layer_head_image_to_text.png",
    } <= artifacts


def _sequential_store(tmp_path):
    """The same extraction by one worker, in one pass, through the library."""
    from pathlib import Path

    from seg4diff.config import load_params
    from tasks.extract import extract_range_task, plan_extraction_task

    params = load_params("params.yaml", {"extract": {"output": str(tmp_path / "sequential.zarr"), "workers": 1}})
    plan = plan_extraction_task.fn(params)
    for start, stop in plan["ranges"]:
        extract_range_task.fn(params, start, stop, plan["sigmas"], plan["layers"])
    return Path(params.extract.output)
