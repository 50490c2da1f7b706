"""Batch jobs on a real server with real models and real dataset files: results equal to
onnxruntime run directly on the same rows, validation at create time, failed chunks, cancel,
deleting a dataset a job reads, and a job spread over two servers."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from asgi_lifespan import LifespanManager
from onnx import TensorProto, helper, numpy_helper
from starlette.applications import Starlette

from maas_server import Settings, create_app
from maas_server.dataset_routes import dataset_store
from maas_server.datasets import DatasetInUse, DatasetStore
from maas_server.job_pacing import POLITE_ROWS
from maas_wire.jobs import JobInfo
from tests import models
from tests.conftest import start_server
from tests.waiting import DEADLINE_S, Gate, until

pytestmark = pytest.mark.asyncio

FEATURES = 64


def lookup_model() -> onnx.ModelProto:
    """``y = table[idx]``: an index outside the table of 10 makes onnxruntime refuse the run (a
    real model failing on bad rows)."""
    table = np.arange(10, dtype=np.float32) * 1.5
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["y"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
        [numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def lookup_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lookup")
    target = root / "lookup" / "1" / "model.onnx"
    target.parent.mkdir(parents=True)
    onnx.save(lookup_model(), target)
    (root / "lookup" / "config.json").write_text('{"max_batch_size": 16}')
    return root


def reference(repository: Path, model: str, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    session = ort.InferenceSession(
        str(repository / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


@asynccontextmanager
async def batch_app(
    repository: Path, data_dir: Path, models: tuple[str, ...] = ("mlp",), **settings: Any
) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    app = create_app(
        Settings(repository=repository, model_control="explicit", data_dir=data_dir, **settings)
    )
    async with LifespanManager(app) as manager:
        for name in models:
            await asyncio.to_thread(app.state.dataplane.repository.load, name)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://maas.test"
        ) as client:
            yield app, client


def add_npy(store: DatasetStore, tmp_path: Path, name: str, array: np.ndarray) -> None:
    path = tmp_path / f"{name}.npy"
    np.save(path, array)
    store.create_from_file(name, path, "npy", owner=None)


async def finished(client: httpx.AsyncClient, job_id: str) -> JobInfo:
    info: JobInfo | None = None

    async def poll() -> None:
        nonlocal info
        while True:
            info = JobInfo.model_validate((await client.get(f"/v2/jobs/{job_id}")).json())
            if info.done:
                return
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), DEADLINE_S)
    assert info is not None
    return info


def result_columns(store: DatasetStore, info: JobInfo) -> dict[str, np.ndarray]:
    assert info.result is not None
    with store.open(info.result["dataset"], info.result["version"]) as opened:
        return opened.read(0, opened.num_rows())


async def test_results_equal_onnxruntime_on_the_same_rows_of_an_npy_file(
    repository: Path, tmp_path: Path
) -> None:
    rows = np.random.default_rng(0).standard_normal((300, FEATURES)).astype(np.float32)
    async with batch_app(repository, tmp_path / "data") as (app, client):
        add_npy(dataset_store(app), tmp_path, "rows", rows)
        answer = await client.post(
            "/v2/jobs",
            json={
                "type": "batch",
                "model": "mlp",
                "dataset": "rows",
                "batch_size": 32,
                "chunk_rows": 64,
            },
        )
        assert answer.status_code == 201, answer.text
        spec = answer.json()["spec"]
        assert spec["inputs"] == {"input": "array"}  # one input, one array: mapped
        assert spec["outputs"] == ["output"] and spec["dataset_version"] == 1
        info = await finished(client, answer.json()["id"])
        assert info.state == "succeeded", info.error
        assert info.progress.done == info.progress.total == 300 and not info.chunk_errors
        columns = result_columns(dataset_store(app), info)
    assert list(columns["row"]) == list(range(300))
    expected = reference(repository, "mlp", {"input": rows})["output"]
    np.testing.assert_allclose(columns["output"], expected, rtol=1e-5, atol=1e-5)


async def test_csv_columns_are_stacked_and_cast_into_the_models_input(
    repository: Path, tmp_path: Path
) -> None:
    rows = np.random.default_rng(1).standard_normal((50, FEATURES))
    path = tmp_path / "wide.csv"
    header = ",".join(f"f{i}" for i in range(FEATURES))
    path.write_text(
        header + "\n" + "\n".join(",".join(str(float(v)) for v in r) for r in rows) + "\n"
    )
    async with batch_app(repository, tmp_path / "data") as (app, client):
        dataset_store(app).create_from_file("wide", path, "csv", owner=None)
        answer = await client.post(
            "/v2/jobs", json={"type": "batch", "model": "mlp", "dataset": "wide"}
        )
        assert answer.status_code == 201, answer.text
        assert answer.json()["spec"]["inputs"] == {"input": [f"f{i}" for i in range(FEATURES)]}
        assert answer.json()["spec"]["batch_size"] == 64  # the model's max_batch_size
        info = await finished(client, answer.json()["id"])
        assert info.state == "succeeded", info.error
        columns = result_columns(dataset_store(app), info)
    expected = reference(repository, "mlp", {"input": rows.astype(np.float32)})["output"]
    np.testing.assert_allclose(columns["output"], expected, rtol=1e-5, atol=1e-5)


async def test_a_spec_that_does_not_fit_the_model_is_a_400_naming_the_column(
    repository: Path, tmp_path: Path
) -> None:
    async with batch_app(repository, tmp_path / "data") as (app, client):
        store = dataset_store(app)
        add_npy(store, tmp_path, "narrow", np.zeros((4, 32), dtype=np.float32))
        add_npy(store, tmp_path, "fits", np.zeros((4, FEATURES), dtype=np.float32))
        path = tmp_path / "text.csv"
        path.write_text("input,other\nhello,1\nworld,2\n")
        store.create_from_file("text", path, "csv", owner=None)
        cases = [
            (
                {"dataset": "narrow"},
                "column 'array' has shape [32] per row; model input 'input' "
                "expects FP32 [64] per row",
            ),
            ({"dataset": "text"}, "column 'input' is BYTES; model input 'input' expects FP32"),
            ({"dataset": "text", "inputs": {"input": "nope"}}, "column 'nope'"),
            ({"dataset": "text", "inputs": {"x": "other"}}, "'inputs' names 'x'"),
            ({"dataset": "fits", "outputs": ["nope"]}, "no output 'nope'"),
            (
                {"dataset": "fits", "batch_size": 65},
                "exceeds the max_batch_size of model 'mlp', 64",
            ),
            ({"dataset": "fits", "colour": 1}, "unknown batch job field 'colour'"),
            ({"dataset": "fits", "priority": 0}, "'priority'"),
        ]
        for extra, words in cases:
            answer = await client.post("/v2/jobs", json={"type": "batch", "model": "mlp", **extra})
            assert answer.status_code == 400, (extra, answer.text)
            assert words in answer.json()["error"], (extra, answer.json()["error"])
        missing = await client.post(
            "/v2/jobs", json={"type": "batch", "model": "mlp", "dataset": "absent"}
        )
        assert missing.status_code == 404 and "absent" in missing.json()["error"]
        no_model = await client.post(
            "/v2/jobs", json={"type": "batch", "model": "nope", "dataset": "narrow"}
        )
        assert no_model.status_code == 404
        assert (await client.get("/v2/jobs")).json()["jobs"] == []


async def test_a_failing_chunk_fails_its_rows_only_and_the_job_goes_on(
    lookup_repository: Path, tmp_path: Path
) -> None:
    idx = np.arange(64, dtype=np.int64) % 10
    idx[20] = 99  # rows 16:24 (batch_size 8) cannot run
    async with batch_app(lookup_repository, tmp_path / "data", ("lookup",)) as (app, client):
        add_npy(dataset_store(app), tmp_path, "idx", idx)
        body = {
            "type": "batch",
            "model": "lookup",
            "dataset": "idx",
            "batch_size": 8,
            "chunk_rows": 16,
        }
        info = await finished(client, (await client.post("/v2/jobs", json=body)).json()["id"])
        assert info.state == "succeeded", info.error
        assert [(c.start, c.stop) for c in info.chunk_errors] == [(16, 24)]
        assert "out of bounds" in info.chunk_errors[0].error or "idx" in info.chunk_errors[0].error
        columns = result_columns(dataset_store(app), info)
        good = [r for r in range(64) if not 16 <= r < 24]
        assert list(columns["row"]) == good
        np.testing.assert_array_equal(columns["y"], (idx[good] * 1.5).astype(np.float32))
        events = (await client.get(f"/v2/jobs/{info.id}/events")).text
        assert "event: chunk_error" in events

        stop = await client.post("/v2/jobs", json={**body, "stop_on_error": True})
        stopped = await finished(client, stop.json()["id"])
        assert stopped.state == "failed"
        assert stopped.error is not None and "rows 16:24 failed" in stopped.error


async def test_cancel_a_running_batch_job_and_a_dataset_in_use_cannot_be_deleted(
    repository: Path, tmp_path: Path
) -> None:
    rows = np.ones((256, FEATURES), dtype=np.float32)
    async with batch_app(repository, tmp_path / "data") as (app, client):
        add_npy(dataset_store(app), tmp_path, "rows", rows)
        gate = Gate(app.state.dataplane.repository.get("mlp"), hold=1)
        body = {
            "type": "batch",
            "model": "mlp",
            "dataset": "rows",
            "batch_size": 16,
            "chunk_rows": 16,
            "concurrency": 1,
        }
        job_id = (await client.post("/v2/jobs", json=body)).json()["id"]
        await gate.wait_started()
        with pytest.raises(DatasetInUse, match=f"in use by job {job_id}"):
            dataset_store(app).delete("rows")
        cancel = await client.post(f"/v2/jobs/{job_id}/cancel")
        assert cancel.status_code == 200
        gate.open()
        info = await finished(client, job_id)
        assert info.state == "cancelled" and info.progress.done < 256
        assert info.result is None
        await until(lambda: not dataset_store(app).in_use("rows", 1))
        assert dataset_store(app).delete("rows") == [1]


async def test_a_job_spreads_its_requests_over_several_servers(
    repository: Path, tmp_path: Path
) -> None:
    rows = np.random.default_rng(2).standard_normal((512, FEATURES)).astype(np.float32)
    first = start_server(
        Settings(repository=repository, data_dir=tmp_path / "a", strict_readiness=False)
    )
    second = start_server(
        Settings(repository=repository, data_dir=tmp_path / "b", strict_readiness=False)
    )
    try:
        async with httpx.AsyncClient(base_url=first.url) as client:
            store: DatasetStore = dataset_store(first.server.config.app)
            add_npy(store, tmp_path, "rows", rows)
            body = {
                "type": "batch",
                "model": "mlp",
                "dataset": "rows",
                "batch_size": 16,
                "chunk_rows": 64,
                "endpoints": [first.url, second.url],
            }
            answer = await client.post("/v2/jobs", json=body)
            assert answer.status_code == 201, answer.text
            info = await finished(client, answer.json()["id"])
            assert info.state == "succeeded", (info.error, info.chunk_errors[:1])
            columns = result_columns(store, info)
            counts = []
            for url in (first.url, second.url):
                stats = httpx.get(f"{url}/v2/models/mlp/stats").json()["model_stats"][0]
                counts.append(stats["inference_count"])
    finally:
        first.stop()
        second.stop()
    assert all(c > 0 for c in counts), counts  # both servers ran rows of the job
    assert sum(counts) >= 512
    assert list(columns["row"]) == list(range(512))
    expected = reference(repository, "mlp", {"input": rows})["output"]
    np.testing.assert_allclose(columns["output"], expected, rtol=1e-5, atol=1e-5)


async def test_text_inputs_and_outputs(repository: Path, tmp_path: Path) -> None:
    words = [f"word {i}" for i in range(40)]
    path = tmp_path / "words.csv"
    path.write_text("text,n\n" + "\n".join(f"{w},{i}" for i, w in enumerate(words)) + "\n")
    async with batch_app(repository, tmp_path / "data", ("strings",)) as (app, client):
        store = dataset_store(app)
        store.create_from_file("words", path, "csv", owner=None)
        body = {"type": "batch", "model": "strings", "dataset": "words", "batch_size": 16}
        answer = await client.post("/v2/jobs", json=body)
        assert answer.status_code == 201, answer.text
        info = await finished(client, answer.json()["id"])
        assert info.state == "succeeded", info.error
        columns = result_columns(store, info)
    assert columns["row"].tolist() == list(range(40))
    assert columns["upper"].tolist() == [w.upper() for w in words]
    assert columns["same"].tolist() == words


async def test_a_full_queue_makes_the_job_wait_not_fail(tmp_path: Path) -> None:
    """The job's priority level holds one waiting request: the job's other requests get 503
    (queue full) while the model is held, and are sent again once it is free."""
    repository = tmp_path / "models"
    models.save(models.mlp_model(), repository / "mlp" / "1" / "model.onnx")
    config = {
        "max_batch_size": 64,
        "dynamic_batching": {
            "priority_levels": 2,
            "priority_queue_policy": {"2": {"max_queue_size": 1}},
        },
    }
    (repository / "mlp" / "config.json").write_text(json.dumps(config))
    rows = np.random.default_rng(4).standard_normal((128, FEATURES)).astype(np.float32)
    async with batch_app(repository, tmp_path / "data") as (app, client):
        add_npy(dataset_store(app), tmp_path, "rows", rows)
        model = app.state.dataplane.repository.get("mlp")
        gate = Gate(model, hold=1)
        body = {
            "type": "batch",
            "model": "mlp",
            "dataset": "rows",
            "batch_size": 8,
            "concurrency": 4,
        }
        answer = await client.post("/v2/jobs", json=body)
        assert answer.json()["spec"]["priority"] == 2  # the lowest level
        await gate.wait_started()
        await until(lambda: model.stats.rejected.get("queue_full", 0) > 0)
        gate.open()
        info = await finished(client, answer.json()["id"])
        assert info.state == "succeeded" and not info.chunk_errors, info.chunk_errors[:1]
        columns = result_columns(dataset_store(app), info)
    expected = reference(repository, "mlp", {"input": rows})["output"]
    np.testing.assert_allclose(columns["output"], expected, rtol=1e-5, atol=1e-5)


async def test_a_job_yields_to_online_requests(tmp_path: Path) -> None:
    """While other requests use the model, the job's requests shrink to POLITE_ROWS rows, one
    at a time; alone, it sends its full batches."""
    repository = tmp_path / "models"
    models.save(models.mlp_model(), repository / "mlp" / "1" / "model.onnx")
    (repository / "mlp" / "config.json").write_text('{"max_batch_size": 256}')
    rows = np.random.default_rng(6).standard_normal((4096, FEATURES)).astype(np.float32)
    body = {"type": "batch", "model": "mlp", "dataset": "rows", "batch_size": 256}
    async with batch_app(repository, tmp_path / "data") as (app, client):
        add_npy(dataset_store(app), tmp_path, "rows", rows)
        model = app.state.dataplane.repository.get("mlp")
        alone = await finished(client, (await client.post("/v2/jobs", json=body)).json()["id"])
        assert alone.state == "succeeded"
        assert set(model.stats.batches) == {256}  # alone: full batches only

        one_row = {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, FEATURES],
                    "datatype": "FP32",
                    "data": [0.0] * FEATURES,
                }
            ]
        }
        job_id = ""
        online = 0

        async def traffic() -> None:
            nonlocal online
            while not job_id or (await client.get(f"/v2/jobs/{job_id}")).json()["state"] not in (
                "succeeded",
                "failed",
            ):
                answer = await client.post("/v2/models/mlp/infer", json=one_row)
                assert answer.status_code == 200
                online += 1
                await asyncio.sleep(0)  # an in-process request may never yield to the job

        task = asyncio.create_task(traffic())
        await until(lambda: online >= 3)
        job_id = (await client.post("/v2/jobs", json=body)).json()["id"]
        await asyncio.wait_for(task, DEADLINE_S)
        polite = await finished(client, job_id)
        assert polite.state == "succeeded"
        assert POLITE_ROWS in model.stats.batches  # the job's requests while online ones came
        columns = result_columns(dataset_store(app), polite)
    expected = reference(repository, "mlp", {"input": rows})["output"]
    np.testing.assert_allclose(columns["output"], expected, rtol=1e-5, atol=1e-5)


async def test_a_large_result_is_streamed_from_the_part_files(
    repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from maas_server import batch_job

    monkeypatch.setattr(batch_job, "IN_MEMORY_RESULT_BYTES", 0)  # every result is "large"
    rows = np.random.default_rng(8).standard_normal((300, FEATURES)).astype(np.float32)
    async with batch_app(repository, tmp_path / "data") as (app, client):
        add_npy(dataset_store(app), tmp_path, "rows", rows)
        body = {
            "type": "batch",
            "model": "mlp",
            "dataset": "rows",
            "batch_size": 32,
            "chunk_rows": 64,
        }
        info = await finished(client, (await client.post("/v2/jobs", json=body)).json()["id"])
        assert info.state == "succeeded", info.error
        columns = result_columns(dataset_store(app), info)
    assert columns["row"].tolist() == list(range(300))
    expected = reference(repository, "mlp", {"input": rows})["output"]
    np.testing.assert_allclose(columns["output"], expected, rtol=1e-5, atol=1e-5)


async def test_a_batch_job_reads_only_its_keys_datasets(repository: Path, tmp_path: Path) -> None:
    """With API keys, a batch job over another key's dataset is a 404 (as the dataset's own
    routes say); the owner's job and an admin key's job are accepted."""
    from maas_server.keys_file import add_key

    keys = tmp_path / "keys.json"
    alice, _ = add_key(keys, "alice", ["jobs", "read", "infer"])
    bob, _ = add_key(keys, "bob", ["jobs", "read", "infer"])
    root, _ = add_key(keys, "root", ["admin", "jobs", "read"])
    rows = np.random.default_rng(1).standard_normal((20, FEATURES)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, rows)
    body = {"type": "batch", "model": "mlp", "dataset": "rows"}
    async with batch_app(repository, tmp_path / "data", api_keys_file=keys) as (_, client):
        uploaded = await client.post(
            "/v2/datasets/rows?format=npy",
            content=buffer.getvalue(),
            headers={"Authorization": f"Bearer {alice}"},
        )
        assert uploaded.status_code == 201, uploaded.text
        refused = await client.post(
            "/v2/jobs", json=body, headers={"Authorization": f"Bearer {bob}"}
        )
        assert refused.status_code == 404 and "no dataset named 'rows'" in refused.text
        for key in (alice, root):
            made = await client.post(
                "/v2/jobs", json=body, headers={"Authorization": f"Bearer {key}"}
            )
            assert made.status_code == 201, made.text
