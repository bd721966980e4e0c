import json

import mlflow
import yaml
from conftest import base_params


def test_prepare_flow_writes_stores_logs_mlflow_and_artifact(prefect_harness, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client

    from flows.prepare import prepare
    from seg4diff.data.prepared import open_prepared

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(base_params(tmp_path)))
    report = prepare(params_path="params.yaml")
    assert {s: r["kept"] for s, r in report.items()} == {"train": 12, "val": 4, "test": 6}
    metrics = tmp_path / "prepare.metrics.json"  # beside the redirected prepare.output
    assert json.loads(metrics.read_text())["test"] == {"kept": 6, "skipped": 0}
    store = open_prepared(tmp_path / "prepared" / "val.zarr")
    assert store.sizes["sample"] == 4 and store.attrs["has_background"]

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["seg4diff"], output_format="list")
    assert [r.info.run_name for r in runs] == ["prepare"]
    assert runs[0].data.metrics["train.kept"] == 12 and runs[0].data.params["data.shapes.num_train"] == "12"

    import asyncio

    async def artifact():
        async with get_client() as client:
            return await client.read_latest_artifacts()

    artifacts = {a.key: a for a in asyncio.run(artifact())}
    assert "| train | 12 | 12 |" in artifacts["prepare-summary"].data
