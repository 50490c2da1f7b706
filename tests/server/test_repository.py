"""The model repository: configuration, version policies, explicit loading, atomic swaps, and
models that fail to load without taking the server down."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager

from maas_server import Settings, create_app
from maas_server.config import ConfigError, load_config
from maas_server.repository import ModelRepository
from tests import models
from tests.conftest import free_port
from tests.waiting import DEADLINE_S, Gate


def put(root: Path, name: str, model: Any, config: Any = None, version: int = 1) -> Path:
    models.save(model, root / name / str(version) / "model.onnx")
    if config is not None:
        (root / name / "config.json").write_text(json.dumps(config))
    return root / name


async def client_for(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for _, client in app_and_client_for(settings):
        yield client


async def app_and_client_for(settings: Settings) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    app = create_app(settings)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as c,
    ):
        yield app, c


def mlp_body(rows: int = 1) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "input", "shape": [rows, 64], "datatype": "FP32", "data": [0.25] * (64 * rows)}
        ]
    }


def test_version_policies(tmp_path: Path) -> None:
    for version in (1, 2, 3):
        put(tmp_path, "m", models.mlp_model(seed=version), version=version)
    repo = ModelRepository(tmp_path)
    cases = [
        (None, [3]),
        ({"version_policy": {"latest": {"num_versions": 2}}}, [2, 3]),
        ({"version_policy": {"all": {}}}, [1, 2, 3]),
        ({"version_policy": {"specific": {"versions": [1, 3]}}}, [1, 3]),
    ]
    for config, expected in cases:
        override = json.dumps(config) if config is not None else None
        assert repo.load("m", override).ready_versions() == expected


def test_config_yaml_and_overrides(tmp_path: Path) -> None:
    put(tmp_path, "m", models.mlp_model())
    (tmp_path / "m" / "config.yaml").write_text(
        "max_batch_size: 4\ninputs:\n  - name: input\n    shape: [-1, 64]\n"
        "execution_providers:\n  - name: CPUExecutionProvider\n"
        "    options: {intra_op_num_threads: 1}\ngraph_optimization_level: basic\n"
    )
    config = load_config(tmp_path / "m")
    assert config.max_batch_size == 4
    record = ModelRepository(tmp_path).load("m")
    assert record.state == "READY", record.reason
    model = record.versions[1].model
    assert model is not None
    assert model.providers == ["CPUExecutionProvider"]


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"max_batch_size": -1}, "max_batch_size"),
        ({"labels": "../../etc/passwd"}, "inside the model's folder"),
        ({"labels": "missing.txt"}, "cannot read labels file"),
        ({"inputs": [{"name": "nope", "shape": [1]}]}, "unknown input"),
        ({"inputs": [{"name": "input", "shape": [-1, 32]}]}, "does not fit"),
        ({"version_policy": {"latest": {"num_versions": 1}, "all": {}}}, "only one"),
        ({"version_policy": {"specific": {"versions": [9]}}}, "selects none"),
        ({"require_gpu": True}, "require_gpu"),
        ({"execution_providers": ["NoSuchExecutionProvider"], "require_gpu": True}, "require_gpu"),
    ],
)
def test_bad_configurations_are_reported(tmp_path: Path, config: Any, fragment: str) -> None:
    put(tmp_path, "m", models.mlp_model(), config)
    record = ModelRepository(tmp_path).load("m")
    assert record.state == "UNAVAILABLE"
    assert fragment in record.reason


def test_batching_needs_variable_first_dimension(tmp_path: Path) -> None:
    from onnx import TensorProto

    put(tmp_path, "m", models.identity_model(TensorProto.FLOAT, [2, 3]), {"max_batch_size": 4})
    record = ModelRepository(tmp_path).load("m")
    assert "variable first dimension" in record.reason


def test_unparseable_config_file(tmp_path: Path) -> None:
    put(tmp_path, "m", models.mlp_model())
    (tmp_path / "m" / "config.json").write_text("{nope")
    with pytest.raises(ConfigError, match=r"cannot parse config\.json"):
        load_config(tmp_path / "m")


def test_model_file_symlink_outside_repository_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    models.save(models.mlp_model(), outside / "model.onnx")
    repo_root = tmp_path / "repo"
    (repo_root / "m" / "1").mkdir(parents=True)
    (repo_root / "m" / "1" / "model.onnx").symlink_to(outside / "model.onnx")
    (repo_root / "escape").symlink_to(outside, target_is_directory=True)
    repo = ModelRepository(repo_root)
    assert "links outside" in repo.load("m").reason
    assert "escape" not in repo.model_names()


def test_cpu_fallback_is_reported(tmp_path: Path) -> None:
    put(
        tmp_path,
        "m",
        models.mlp_model(),
        {"execution_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]},
    )
    record = ModelRepository(tmp_path).load("m")
    model = record.versions[1].model
    assert model is not None
    assert model.providers == ["CPUExecutionProvider"]
    assert model.fell_back_to_cpu


def test_warmup_measures_run_time(tmp_path: Path) -> None:
    put(tmp_path, "m", models.mlp_model(), {"warmup": 3})
    model = ModelRepository(tmp_path).load("m").versions[1].model
    assert model is not None
    assert model.onnx.run_time_us is not None and model.onnx.run_time_us > 0


async def test_explicit_mode_load_and_unload(repository: Path) -> None:
    settings = Settings(repository=repository, model_control="explicit")
    async for client in client_for(settings):
        assert (await client.get("/v2/health/ready")).status_code == 200
        index = (await client.post("/v2/repository/index")).json()
        assert {r["state"] for r in index} == {"UNAVAILABLE"}
        refused = await client.post("/v2/models/mlp/infer", json=mlp_body())
        assert refused.status_code == 503
        assert "not loaded" in refused.json()["error"]
        assert (await client.post("/v2/repository/models/mlp/load")).status_code == 200
        assert (await client.post("/v2/models/mlp/infer", json=mlp_body())).status_code == 200
        assert (await client.post("/v2/repository/models/mlp/unload")).status_code == 200
        gone = await client.post("/v2/models/mlp/infer", json=mlp_body())
        assert gone.status_code == 503
        assert "unloaded" in gone.json()["error"]
        rows = (await client.post("/v2/repository/index", json={"ready": True})).json()
        assert rows == []


async def test_strict_readiness_reports_failed_models(repository: Path) -> None:
    async for client in client_for(Settings(repository=repository)):
        assert (await client.get("/v2/health/live")).status_code == 200
        ready = await client.get("/v2/health/ready")
        assert ready.status_code == 503
        assert (await client.post("/v2/models/mlp/infer", json=mlp_body())).status_code == 200


async def test_load_swaps_atomically_while_serving(tmp_path: Path) -> None:
    put(tmp_path, "slow", models.slow_model(0.4), {"max_batch_size": 256})
    async for app, client in app_and_client_for(Settings(repository=tmp_path)):
        gate = Gate(app.state.dataplane.repository.get("slow"))
        rows = models.SLOW_MODEL_BATCH
        body = {
            "inputs": [
                {
                    "name": "x",
                    "shape": [rows, models.SLOW_MODEL_WIDTH],
                    "datatype": "FP32",
                    "data": [0.001] * (rows * models.SLOW_MODEL_WIDTH),
                }
            ]
        }
        in_flight = asyncio.create_task(client.post("/v2/models/slow/infer", json=body))
        await gate.wait_started()  # running on the version about to be replaced
        override = json.dumps({"max_batch_size": 512})
        loaded = await client.post(
            "/v2/repository/models/slow/load", json={"parameters": {"config": override}}
        )
        assert loaded.status_code == 200, loaded.text
        assert not in_flight.done()  # the swap did not wait for it, nor cut it
        gate.open()
        response = await in_flight
        assert response.status_code == 200, response.text
        assert len(response.json()["outputs"][0]["data"]) == rows * models.SLOW_MODEL_WIDTH
        config = (await client.get("/v2/models/slow/config")).json()
        assert config["max_batch_size"] == 512


async def test_failed_reload_keeps_the_old_version_serving_and_the_server_up(
    tmp_path: Path,
) -> None:
    put(tmp_path, "m", models.mlp_model())
    put(tmp_path, "other", models.mlp_model(seed=5))
    async for client in client_for(Settings(repository=tmp_path)):
        (tmp_path / "m" / "1" / "model.onnx").write_bytes(models.corrupt_model_bytes())
        failed = await client.post("/v2/repository/models/m/load")
        assert failed.status_code == 400
        assert "cannot load" in failed.json()["error"]
        assert (await client.post("/v2/models/other/infer", json=mlp_body())).status_code == 200
        assert (await client.post("/v2/models/m/infer", json=mlp_body())).status_code == 200


async def test_reload_with_a_bad_config_override_keeps_the_old_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Triton's behaviour: the failed attempt is reported (answer, index, log) and the version
    loaded before goes on serving; a good reload afterwards replaces it."""
    put(tmp_path, "m", models.mlp_model())
    async for client in client_for(Settings(repository=tmp_path, model_control="explicit")):
        assert (await client.post("/v2/repository/models/m/load")).status_code == 200
        bad = json.dumps({"instance_count": "many"})
        with caplog.at_level("ERROR", logger="maas_server"):
            failed = await client.post(
                "/v2/repository/models/m/load", json={"parameters": {"config": bad}}
            )
        assert failed.status_code == 400
        error = failed.json()["error"]
        assert "instance_count" in error and "keep serving" in error
        assert any("reload failed" in r.getMessage() for r in caplog.records)
        served = await client.post("/v2/models/m/infer", json=mlp_body())
        assert served.status_code == 200, served.text
        assert (await client.get("/v2/health/ready")).status_code == 200
        (row,) = (await client.post("/v2/repository/index", json={})).json()
        assert row["state"] == "READY"
        assert "last reload failed" in row["reason"] and "instance_count" in row["reason"]
        good = json.dumps({"max_batch_size": 4})
        reloaded = await client.post(
            "/v2/repository/models/m/load", json={"parameters": {"config": good}}
        )
        assert reloaded.status_code == 200
        (row,) = (await client.post("/v2/repository/index", json={})).json()
        assert row == {"name": "m", "version": "1", "state": "READY", "reason": ""}
        assert (await client.get("/v2/models/m/config")).json()["max_batch_size"] == 4


def test_sigterm_finishes_in_flight_requests(tmp_path: Path) -> None:
    put(tmp_path, "slow", models.slow_model(0.5), {"max_batch_size": 256})
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "maas_cli",
            "serve",
            str(tmp_path),
            "--port",
            str(port),
            "--log-level",
            "info",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        x = np.full((models.SLOW_MODEL_BATCH, models.SLOW_MODEL_WIDTH), 0.001, np.float32)
        from maas_client.codec import HEADER_LENGTH
        from maas_client.protocol import TensorPayload, encode_request

        body = encode_request([TensorPayload("x", x, "FP32", binary=True)])

        async def send_then_terminate() -> httpx.Response:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                task = asyncio.create_task(
                    client.post(
                        "/v2/models/slow/infer",
                        content=bytes(body.content),
                        headers={HEADER_LENGTH: str(body.header_length)},
                    )
                )
                # SIGTERM once the server runs the request (its pending count says so).
                pending = re.compile(
                    r'^nv_inference_pending_request_count\{[^}]*"slow"[^}]*\} 1', re.M
                )
                deadline = time.monotonic() + DEADLINE_S
                while not pending.search((await client.get("/metrics")).text):
                    assert time.monotonic() < deadline, "the request never reached the server"
                    assert not task.done(), "the request ended before the SIGTERM"
                    await asyncio.sleep(0.005)
                proc.send_signal(signal.SIGTERM)
                return await task

        response = asyncio.run(send_then_terminate())
        assert response.status_code == 200
        # uvicorn re-raises the signal once its graceful shutdown is done.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        assert proc.stdout is not None
        log = proc.stdout.read().decode()
        assert "Application shutdown complete" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.parametrize(("threshold_us", "inline"), [(0.0, False), (1e-3, False), (1e9, True)])
async def test_small_models_run_inline_only_below_threshold(
    tmp_path: Path, threshold_us: float, inline: bool
) -> None:
    put(tmp_path, "m", models.mlp_model())
    record = ModelRepository(tmp_path, inline_threshold_us=threshold_us).load("m")
    version = record.versions[1].model
    assert version is not None
    model = version.onnx
    assert (model.inline_max_elements > 0) is inline
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    results = await asyncio.gather(*[model.run({"input": x}, ["output"]) for _ in range(4)])
    expected = model.run_sync({"input": x}, ["output"])["output"]
    for result in results:
        np.testing.assert_array_equal(result["output"], expected)


def test_instances_take_configured_gpus_in_turn() -> None:
    from maas_server.config import parse_config
    from maas_server.runtime import instance_providers

    config = parse_config(
        {
            "instance_count": 3,
            "device_ids": [0, 2],
            "execution_providers": [
                {"name": "CUDAExecutionProvider", "options": {"device_id": 5, "gpu_mem_limit": 1}},
                {"name": "CPUExecutionProvider", "options": {"intra_op_num_threads": 1}},
            ],
        },
        "test",
    )
    devices = [
        dict(instance_providers(config, config.providers(), i))["CUDAExecutionProvider"]
        for i in range(3)
    ]
    assert [d["device_id"] for d in devices] == ["0", "2", "0"]
    assert devices[0]["gpu_mem_limit"] == "1"
    cpu = dict(instance_providers(config, config.providers(), 1))["CPUExecutionProvider"]
    assert cpu == {"intra_op_num_threads": 1}
