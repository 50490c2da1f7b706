"""Jobs under ``maas serve --workers 2`` (a real process tree on a free loopback port): they run in
worker 0 only, whichever worker received them; streams, cancels, progress and results work
through either worker; a trained model is served by every worker once its job says succeeded;
worker 0 killed mid-job is replaced and resumes the job, every row exactly once.

Every request goes on a fresh connection (so that either worker may take it) and is paired with
``GET /v2`` on the same connection, whose ``maas_worker`` names the worker that answered. Nothing
is sequenced by sleeping: the tests wait on the server's answers, with deadlines.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest

from maas_server.datasets import DatasetStore
from tests import models
from tests.conftest import free_port, wait_for
from tests.server.test_workers import DEADLINE_S, Served, _model_bytes

ROWS = 200
BATCH = {"type": "batch", "model": "mlp", "dataset": "rows", "batch_size": 8, "chunk_rows": 16}

# At the top level: the spawned workers run this file too. With MAAS_TEST_HOLD_AFTER=N, the
# runs of 'mlp' after the first N of a process wait until the file 'open' exists.
LAUNCHER = """
import asyncio
import os
from pathlib import Path

from maas_server.runtime import OnnxModel

gate = Path(os.environ["MAAS_TEST_GATE"])
hold_after = int(os.environ.get("MAAS_TEST_HOLD_AFTER", "-1"))
run = OnnxModel.run
runs = 0


async def held_run(self, *args, **kwargs):
    global runs
    if self.name == "mlp" and hold_after >= 0:
        runs += 1
        if runs > hold_after:
            (gate / f"held-{os.getpid()}").touch()
            while not (gate / "open").exists():
                await asyncio.sleep(0.01)
    return await run(self, *args, **kwargs)


OnnxModel.run = held_run

if __name__ == "__main__":
    from maas_cli import main

    main()
"""


class Workers(Served):
    gate: Path
    data_dir: Path
    repository: Path

    def on(self, index: int, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """``method path`` on a fresh connection that worker ``index`` took (new connections
        until one lands there)."""
        for _ in range(400):
            with httpx.Client(base_url=self.url, timeout=60) as client:
                meta = client.get("/v2").json()["maas_worker"]
                if meta["index"] == index:
                    return client.request(method, path, **kwargs)
        raise AssertionError(f"no connection reached worker {index}")

    def job(self, job_id: str) -> dict[str, Any]:
        _pid, answer = self.ask("GET", f"/v2/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        info: dict[str, Any] = answer.json()
        return info

    def events(self, job_id: str) -> list[dict[str, Any]]:
        _pid, answer = self.ask("GET", f"/v2/jobs/{job_id}/events?follow=false")
        assert answer.status_code == 200, answer.text
        return _parse(answer.text)

    def over(self, job_id: str) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def done() -> bool:
            found.update(self.job(job_id))
            return found["state"] in ("succeeded", "failed", "cancelled")

        wait_for(done, DEADLINE_S)
        return found


def _parse(text: str) -> list[dict[str, Any]]:
    return [
        orjson.loads(line[len("data: ") :])
        for line in text.splitlines()
        if line.startswith("data: ")
    ]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Workers]]:
    started: list[Workers] = []
    gate = tmp_path / "gate"
    gate.mkdir()
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)

    def start(*flags: str, hold_after: int = -1) -> Workers:
        repository = tmp_path / "repository"
        models.save(models.mlp_model(), repository / "mlp" / "1" / "model.onnx")
        (repository / "mlp" / "config.json").write_text('{"max_batch_size": 64}')
        data_dir = tmp_path / "data"
        port = free_port()
        log = tmp_path / "serve.log"
        command = [sys.executable, str(launcher), "serve", str(repository), "--data-dir"]
        command += [str(data_dir), "--port", str(port), "--access-log", "off"]
        command += ["--workers", "2", "--training-nice", "0", *flags]  # 19 crawls on a busy machine
        env = {**os.environ, "MAAS_TEST_GATE": str(gate), "MAAS_TEST_HOLD_AFTER": str(hold_after)}
        with log.open("ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        served = Workers(process, f"http://127.0.0.1:{port}", log, {})
        served.gate, served.data_dir, served.repository = gate, data_dir, repository
        started.append(served)

        def up() -> bool:
            assert process.poll() is None, served.text()
            try:
                return len(served.serving()) == 2
            except (httpx.TransportError, KeyError, ValueError):
                return False

        wait_for(up, DEADLINE_S)
        return served

    yield start
    (gate / "open").touch()
    for served in started:
        if served.process.poll() is None:
            served.process.send_signal(signal.SIGTERM)
            try:
                served.process.wait(60)
            except subprocess.TimeoutExpired:
                served.process.kill()
                served.process.wait()


def _upload_rows(served: Workers) -> np.ndarray:
    rows = np.random.default_rng(7).standard_normal((ROWS, 64)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, rows)
    answer = httpx.post(f"{served.url}/v2/datasets/rows?format=npy", content=buffer.getvalue())
    assert answer.status_code == 201, answer.text
    return rows


def _check_result(
    served: Workers, info: dict[str, Any], rows: np.ndarray, model: bytes | None = None
) -> None:
    """Every row's result once, in order, and right (as ``model`` answers: by default the mlp's
    version 1)."""
    assert info["state"] == "succeeded", info
    assert info["progress"]["done"] == ROWS and not info["chunk_errors"]
    store = DatasetStore(served.data_dir)
    try:
        result = info["result"]
        with store.open(result["dataset"], result["version"]) as opened:
            columns = opened.read(0, opened.num_rows())
    finally:
        store.close()
    assert columns["row"].tolist() == list(range(ROWS))
    if model is None:
        model = (served.repository / "mlp" / "1" / "model.onnx").read_bytes()
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (expected,) = session.run(["output"], {"input": rows})
    np.testing.assert_allclose(columns["output"], expected, rtol=1e-5, atol=1e-5)


def _check_events(events: list[dict[str, Any]], *states: str) -> None:
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # unique, none lost
    found = [e["data"]["state"] for e in events if e["type"] == "state"]
    assert found == list(states), found


def test_jobs_created_through_either_worker_run_once_in_worker_0(
    launch: Callable[..., Workers],
) -> None:
    """Jobs created through both workers, the model held: one job runs, in worker 0 (one slot
    for the whole server). Stopped (SIGTERM) and started again: worker 0 alone resumes the
    running job and runs the queued ones; each job once, every row once."""
    served = launch("--max-running-jobs", "1", hold_after=0)
    rows = _upload_rows(served)
    created: dict[str, int] = {}  # job id -> pid of the worker that took the create
    while len(created) < 4 or len(set(created.values())) < 2:
        pid, answer = served.ask("POST", "/v2/jobs", json=BATCH)
        assert answer.status_code == 201, answer.text
        created[answer.json()["id"]] = pid
        assert len(created) < 100, "the creates never reached the second worker"
    # the same Idempotency-Key through each worker: one job
    key = {"Idempotency-Key": "once"}
    first = served.on(0, "POST", "/v2/jobs", json=BATCH, headers=key)
    again = served.on(1, "POST", "/v2/jobs", json=BATCH, headers=key)
    assert (first.status_code, again.status_code) == (201, 200), again.text
    assert first.json()["id"] == again.json()["id"]
    created[first.json()["id"]] = 0

    wait_for(lambda: any(served.gate.glob("held-*")), DEADLINE_S)
    (runner,) = (pid for pid, index in served.serving().items() if index == 0)
    jobs = served.on(1, "GET", "/v2/jobs").json()["jobs"]
    assert sorted(j["state"] for j in jobs) == ["queued"] * (len(created) - 1) + ["running"]
    assert [p.name for p in served.gate.glob("held-*")] == [f"held-{runner}"]
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(60) == 0, served.text()

    (served.gate / "open").touch()
    served = launch()  # the same folders
    for job_id in created:
        info = served.over(job_id)
        _check_result(served, info, rows)
        events = served.events(job_id)
        messages = [e["data"].get("message") for e in events if e["type"] == "log"]
        if messages:  # the job that was running: resumed once
            assert messages == ["interrupted by a server restart: resume"]
            _check_events(events, "queued", "running", "running", "succeeded")
        else:
            _check_events(events, "queued", "running", "succeeded")  # ran once
    resumed = [j for j in created if any(e["type"] == "log" for e in served.events(j))]
    assert len(resumed) == 1
    listing = httpx.get(f"{served.url}/v2/datasets").json()["datasets"]
    assert len(listing) == 1 + len(created)  # the rows, and one result per job
    assert "Traceback" not in served.text()


class Follower:
    """The event stream of a job, read on a thread over a connection worker ``index`` took."""

    def __init__(self, served: Workers, index: int, job_id: str) -> None:
        self.events: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.connected = threading.Event()

        def follow() -> None:
            try:
                for _ in range(400):
                    with httpx.Client(base_url=served.url, timeout=60) as client:
                        if client.get("/v2").json()["maas_worker"]["index"] != index:
                            continue
                        path = f"/v2/jobs/{job_id}/events"
                        with client.stream("GET", path) as stream:
                            self.connected.set()
                            for line in stream.iter_lines():
                                if line.startswith("data: "):
                                    self.events.append(orjson.loads(line[len("data: ") :]))
                        return
                raise AssertionError(f"no connection reached worker {index}")
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=follow, daemon=True)
        self.thread.start()


def test_streams_and_cancels_through_either_worker(launch: Callable[..., Workers]) -> None:
    """Job A runs (held after 4 model runs), B and C wait for the one slot. C's stream is
    followed on worker 1, B is cancelled through worker 0 and the running A through worker 1;
    then the model runs again: A ends cancelled, C runs and its stream on worker 1 sees it
    live, to its end."""
    served = launch("--max-running-jobs", "1", hold_after=4)
    rows = _upload_rows(served)
    a, b, c = (served.on(i % 2, "POST", "/v2/jobs", json=BATCH).json()["id"] for i in range(3))
    wait_for(lambda: served.job(a)["progress"]["done"] > 0, DEADLINE_S)
    wait_for(lambda: any(served.gate.glob("held-*")), DEADLINE_S)
    follower = Follower(served, 1, c)
    wait_for(lambda: len(follower.events) >= 1 or follower.error is not None, DEADLINE_S)
    assert follower.error is None, follower.error

    cancelled = served.on(0, "POST", f"/v2/jobs/{b}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    asked = served.on(1, "POST", f"/v2/jobs/{a}/cancel")
    assert asked.status_code == 200, asked.text
    # worker 0 saw the request that worker 1 stored
    wait_for(
        lambda: any(e["data"].get("message") == "cancel requested" for e in served.events(a)),
        DEADLINE_S,
    )
    assert served.job(c)["state"] == "queued"
    (served.gate / "open").touch()
    assert served.over(a)["state"] == "cancelled"
    assert served.over(b)["state"] == "cancelled"
    _check_events(served.events(b), "queued", "cancelled")
    _check_result(served, served.over(c), rows)
    follower.thread.join(DEADLINE_S)
    assert not follower.thread.is_alive() and follower.error is None, follower.error
    _check_events(follower.events, "queued", "running", "succeeded")
    assert any(e["type"] == "progress" for e in follower.events)
    assert follower.events == served.events(c)  # the stream on worker 1 missed nothing
    cancel_again = served.on(1, "POST", f"/v2/jobs/{a}/cancel")
    assert cancel_again.status_code == 409, cancel_again.text


def test_a_trained_model_is_served_by_every_worker_when_its_job_succeeds(
    launch: Callable[..., Workers],
) -> None:
    """A training created through worker 1 runs in worker 0, which publishes the model: every
    worker serves it once the job says succeeded. A version published through worker 1 is what
    a batch job running in worker 0 uses."""
    served = launch()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((240, 4)).astype(np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, x=x, label=(x[:, 0] > 0).astype(np.int64))
    answer = httpx.post(f"{served.url}/v2/datasets/points?format=npz", content=buffer.getvalue())
    assert answer.status_code == 201, answer.text
    spec = {"type": "training", "dataset": "points", "target": "label", "name": "trained"}
    # created through worker 1: it runs in worker 0 and publishes to both
    created = served.on(1, "POST", "/v2/jobs", json={**spec, "model": "linear"})
    assert created.status_code == 201, created.text
    info = served.over(created.json()["id"])
    assert info["state"] == "succeeded", info["error"]
    assert info["result"]["version"] == 1
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 0, 0, 0]}]}
    served.on_every_worker(
        "POST",
        "/v2/models/trained/infer",
        lambda a: a.status_code == 200 and a.json()["model_version"] == "1",
        json=body,
    )
    version_2 = _model_bytes(models.mlp_model(seed=1))
    answer = served.on(1, "PUT", "/v2/repository/models/mlp/versions/2", content=version_2)
    assert answer.status_code == 201, answer.text
    rows = _upload_rows(served)
    job_id = served.on(1, "POST", "/v2/jobs", json=BATCH).json()["id"]
    info = served.over(job_id)
    assert info["spec"]["version"] in (None, "2", 2), info["spec"]
    _check_result(served, info, rows, version_2)


def test_worker_0_killed_mid_job_is_replaced_and_resumes_every_row_once(
    launch: Callable[..., Workers],
) -> None:
    served = launch(hold_after=4)
    rows = _upload_rows(served)
    job_id = served.on(1, "POST", "/v2/jobs", json=BATCH).json()["id"]
    wait_for(lambda: served.job(job_id)["progress"]["done"] > 0, DEADLINE_S)
    wait_for(lambda: any(served.gate.glob("held-*")), DEADLINE_S)
    before = served.serving()
    (victim,) = (pid for pid, index in before.items() if index == 0)
    assert served.job(job_id)["state"] == "running"
    os.kill(victim, signal.SIGKILL)
    (served.gate / "open").touch()

    def replaced() -> bool:
        view = served.serving()
        return len(view) == 2 and victim not in view and 0 in view.values()

    wait_for(replaced, DEADLINE_S)
    info = served.over(job_id)
    _check_result(served, info, rows)
    events = served.events(job_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    messages = [e["data"].get("message") for e in events if e["type"] == "log"]
    assert "interrupted by a server restart: resume" in messages
    states = [e["data"]["state"] for e in events if e["type"] == "state"]
    assert states == ["queued", "running", "running", "succeeded"]  # resumed once, by worker 0
