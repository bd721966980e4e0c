"""End to end through a real Prefect server on a free loopback port: serve the deployments, run the pipeline
deployment on a tiny config with `prefect deployment run … --watch`, check outputs and the flow-run state."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml
from conftest import REPO, base_params


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, seconds: float, what: str):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(1)
    raise TimeoutError(f"{what} not ready after {seconds} s")


@pytest.mark.slow
def test_pipeline_deployment_runs_against_a_real_server(tmp_path):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "TQDM_DISABLE": "1",
    }
    raw = base_params(tmp_path)
    raw["model"] = {"path": str(tmp_path / "organism")}
    raw["pretrain"] = {
        "output": str(tmp_path / "organism"),
        "steps": 10,
        "batch_size": 4,
        "warmup_steps": 2,
        "log_every": 5,
        "architecture": {"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 8, "text_length": 12},
        "num_samples": 2,
        "sample_steps": 2,
    }
    raw["extract"] = {"sigmas": [0.5], "max_tokens": 8, "batch_size": 4, "output": str(tmp_path / "attention.zarr")}
    raw["score"] = {"bootstrap_resamples": 20, "examples": 1}
    raw["causal"] = {  # the val split holds 4 images: 4 captions (more is refused), a tiny calibration
        "captions": 4,
        "calibration_samples": 2,
        "generation_steps": 2,
        "flow_samples": 4,
        "bootstrap_resamples": 200,
    }
    raw["finetune"] = {"steps": 2, "batch_size": 2, "rank": 2, "alpha": 2, "validate_every": 2, "validation_samples": 2}
    raw["evaluate"] = {"batch_size": 6, "gallery": 1, "generation_samples": 1}
    raw["orchestration"] = {"local_workers": 1}
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(raw))

    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    served = None
    try:
        _wait(lambda: urllib.request.urlopen(f"{api}/health", timeout=2).status == 200, 120, "Prefect server")
        served = subprocess.Popen(
            [sys.executable, "-m", "flows.deployments"],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        run = lambda *args: subprocess.run(
            [sys.executable, "-m", "prefect", *args],
            env=env,
            cwd=REPO,  # noqa: E731
            capture_output=True,
            text=True,
            timeout=600,
        )
        _wait(
            lambda: "seg4diff/pipeline" in run("deployment", "ls").stdout.replace("\n", ""), 120, "served deployments"
        )
        result = run(
            "deployment",
            "run",
            "seg4diff/pipeline",
            "--params",
            json.dumps({"params_path": str(params_path)}),
            "--watch",
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

        metrics = json.loads((tmp_path / "metrics/evaluate.json").read_text())
        assert {"base", "finetuned"} <= set(metrics)
        expert = json.loads((tmp_path / "results/expert.json").read_text())
        assert expert["layer"] in (0, 1)

        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter

        async def runs():
            async with get_client() as client:
                return await client.read_flow_runs(
                    deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["pipeline"])),
                    flow_run_filter=FlowRunFilter(),
                )

        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api}):
            flow_runs = asyncio.run(runs())
        assert len(flow_runs) == 1 and flow_runs[0].state.is_completed()
    finally:
        for process in (served, server):
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()


@pytest.mark.slow
def test_a_stage_runs_first_time_on_an_empty_prefect_home_with_both_cores_busy(tmp_path):
    """The first start of a server migrates a new database; with two CPU burners that took Prefect's temporary server
    past its start-up timeout. `python -m flows.<stage>` waits for its own server as long as the server is alive."""
    burn = "import time\nend = time.time() + 300\nwhile time.time() < end:\n    pass"
    burners = [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(2)]  # bounded: each stops by itself
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env |= {"PREFECT_HOME": str(tmp_path / "empty-prefect-home"), "TQDM_DISABLE": "1"}
    try:
        started = time.time()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "flows.select",
                "--set",
                f"select.output={tmp_path / 'expert.json'}",
                "--set",
                f"tracking.mlflow_db={tmp_path / 'mlflow.db'}",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        seconds = time.time() - started
    finally:
        for burner in burners:
            burner.kill()
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "empty-prefect-home" / "prefect.db").exists()  # its own server, on the empty home
    expert = json.loads((tmp_path / "expert.json").read_text())
    assert expert == json.loads((REPO / "results/expert.json").read_text())
    print(f"select with an empty PREFECT_HOME and both cores busy: {seconds:.0f} s")
