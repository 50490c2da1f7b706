"""``client.jobs`` against a real server (sync and async), and the idempotency key of a retried
create (the network mocked: the client's own retry path)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import respx

from maas_client import AsyncClient, AsyncJob, Client, ConflictError, Job
from maas_server import Settings
from tests import models
from tests.client.conftest import ClientFactory
from tests.conftest import RunningServer, start_server

ROWS = np.random.default_rng(5).standard_normal((200, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def jobs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("jobs-repository")
    models.save(models.mlp_model(), root / "mlp" / "1" / "model.onnx")
    (root / "mlp" / "config.json").write_text('{"max_batch_size": 64}')
    running = start_server(
        Settings(repository=root, data_dir=root.parent / "jobs-data", strict_readiness=False)
    )
    body = io.BytesIO()
    np.save(body, ROWS)
    answer = httpx.post(f"{running.url}/v2/datasets/rows?format=npy", content=body.getvalue())
    assert answer.status_code == 201, answer.text
    yield running
    running.stop()


def reference(repository: Path) -> np.ndarray:
    session = ort.InferenceSession(str(repository / "mlp" / "1" / "model.onnx"))
    (out,) = session.run(["output"], {"input": ROWS})
    return np.asarray(out)


def test_create_wait_and_events(jobs_server: RunningServer) -> None:
    with Client(jobs_server.url) as client:
        job = client.jobs.create_batch("mlp", "rows", batch_size=16, chunk_rows=32)
        assert isinstance(job, Job) and job.info.spec["batch_size"] == 16
        assert job.wait(progress=False) is job
        assert job.state == "succeeded" and job.progress.done == 200
        assert job.info.result is not None and job.info.result["rows"] == 200
        events = list(job.events())
        assert [e.data["state"] for e in events if e.type == "state"] == [
            "queued",
            "running",
            "succeeded",
        ]
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        later = list(job.events(after=events[-2].seq))
        assert [e.seq for e in later] == [events[-1].seq]
        assert client.jobs.get(job.id).state == "succeeded"
        assert job.id in [j.id for j in client.jobs.list()]
        assert "succeeded" in repr(job) and "200/200 rows" in repr(job)
        assert job.id in job._repr_html_()
        assert job.id in client.jobs.list()._repr_html_()


def test_result_as_arrays_and_as_a_dataframe(jobs_server: RunningServer, tmp_path: Path) -> None:
    repository = Path(jobs_server.server.config.app.state.settings.repository)
    expected = reference(repository)
    with Client(jobs_server.url) as client:
        job = client.jobs.create_batch("mlp", "rows", batch_size=32)
        arrays = job.result()  # waits for the job first
        assert job.state == "succeeded"
        assert arrays["row"].tolist() == list(range(200))
        np.testing.assert_allclose(arrays["output"], expected, rtol=1e-5, atol=1e-5)
        frame = job.result(format="parquet")
        assert list(frame.columns) == ["row", "output"] and len(frame) == 200
        np.testing.assert_allclose(
            np.stack(frame["output"].to_numpy()), expected, rtol=1e-5, atol=1e-5
        )


def test_the_result_of_a_failed_job_raises(jobs_server: RunningServer) -> None:
    from maas_client import JobError

    with Client(jobs_server.url) as client:
        job = client.jobs.create_batch("mlp", "rows", batch_size=8, chunk_rows=8)
        job.wait(progress=False)
        job.info = job.info.model_copy(update={"state": "failed", "error": "boom"})
        with pytest.raises(JobError, match="failed: boom"):
            job.result()


def test_wait_shows_a_progress_bar(
    jobs_server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    with Client(jobs_server.url) as client:
        job = client.jobs.create_batch("mlp", "rows", batch_size=16, chunk_rows=16)
        job.wait(progress="always")
    err = capsys.readouterr().err
    assert f"job {job.id[:8]}" in err and "200/200" in err


def test_the_same_idempotency_key_gives_the_same_job(jobs_server: RunningServer) -> None:
    with Client(jobs_server.url) as client:
        first = client.jobs.create_batch("mlp", "rows", idempotency_key="same-job")
        second = client.jobs.create_batch("mlp", "rows", idempotency_key="same-job")
        assert first.id == second.id
        other = client.jobs.create_batch("mlp", "rows")
        assert other.id != first.id
        for job in (first, other):
            job.wait(progress=False)


def test_a_bad_spec_raises_the_servers_400(jobs_server: RunningServer) -> None:
    from maas_client import BadRequestError

    with Client(jobs_server.url) as client, pytest.raises(BadRequestError, match="'inputs'"):
        client.jobs.create_batch("mlp", "rows", inputs={"nope": "array"})


def test_a_retried_create_sends_the_same_idempotency_key(
    router: respx.Router, routed_client: ClientFactory
) -> None:
    route = router.post("/v2/jobs").mock(
        side_effect=[
            httpx.Response(503, json={"error": "busy"}),
            httpx.Response(
                201, json={"id": "j1", "type": "batch", "state": "queued", "created": "now"}
            ),
        ]
    )
    job = routed_client().jobs.create({"type": "batch", "model": "m", "dataset": "d"})
    assert job.id == "j1"
    keys = [call.request.headers["Idempotency-Key"] for call in route.calls]
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0]


async def test_the_async_client_creates_follows_and_cancels(jobs_server: RunningServer) -> None:
    async with AsyncClient(jobs_server.url) as client:
        job = await client.jobs.create_batch("mlp", "rows", batch_size=8, chunk_rows=8)
        assert isinstance(job, AsyncJob)
        seen = []
        async for event in job.events():
            seen.append(event)
        assert seen[-1].data["state"] == "succeeded"
        await job.refresh()
        assert job.done and job.progress.done == 200
        assert (await job.wait(progress=False)).state == "succeeded"
        with pytest.raises(ConflictError, match="already succeeded"):
            await job.cancel()
