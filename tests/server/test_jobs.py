"""The job machinery (runner, store, routes) with a small job kind defined here: queueing and
the bound on running jobs, cancel, idempotency keys, the event stream and its replay, access."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette

from maas_server import Settings, create_app
from maas_server.errors import BadRequestError
from maas_server.job_store import JobStore
from maas_server.jobs import JobCancelled, JobContext, JobFailed, RestartPolicy, ValidationContext
from maas_server.keys_file import add_key
from maas_wire.jobs import JobEvent, JobInfo, JobProgress
from tests.conftest import free_port
from tests.server.apps import bearer
from tests.waiting import DEADLINE_S, until

pytestmark = pytest.mark.asyncio


class StepKind:
    """``{"type": "steps", "steps": n}``: n steps, each let through by the test."""

    type = "steps"

    def __init__(self) -> None:
        self.release = threading.Semaphore(0)  # released by the test, from any thread
        self.running = 0
        self.most_running = 0

    def validate(self, spec: dict[str, Any], ctx: ValidationContext) -> dict[str, Any]:
        steps = spec.get("steps")
        if not isinstance(steps, int) or steps < 1:
            raise BadRequestError(f"'steps' must be a positive integer, not {steps!r}")
        return {"steps": steps, "fail": bool(spec.get("fail"))}

    def initial_progress(self, spec: Mapping[str, Any]) -> JobProgress:
        return JobProgress(unit="epochs", total=spec["steps"])

    async def run(self, ctx: JobContext) -> dict[str, Any]:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            for step in range(ctx.spec["steps"]):
                while not self.release.acquire(blocking=False):
                    await asyncio.sleep(0.002)
                if ctx.cancelled:
                    raise JobCancelled()
                ctx.set_progress(step + 1, ctx.spec["steps"], "epochs")
                ctx.emit("step", {"step": step})
            if ctx.spec["fail"]:
                raise JobFailed("told to fail")
            return {"steps": ctx.spec["steps"]}
        finally:
            self.running -= 1

    def on_restart(self, job: JobInfo) -> RestartPolicy:
        return "fail"


@asynccontextmanager
async def jobs_app(
    repository: Path, tmp_path: Path, **settings: Any
) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient, StepKind]]:
    base = Settings(repository=repository, model_control="explicit", data_dir=tmp_path / "data")
    app = create_app(replace(base, **settings))
    kind = StepKind()
    app.state.jobs.register(kind)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://maas.test"
        ) as client,
    ):
        yield app, client, kind


async def state_of(client: httpx.AsyncClient, job_id: str, **kw: Any) -> str:
    answer = await client.get(f"/v2/jobs/{job_id}", **kw)
    assert answer.status_code == 200, answer.text
    state: str = answer.json()["state"]
    return state


async def wait_state(client: httpx.AsyncClient, job_id: str, state: str) -> None:
    seen = ""

    async def poll() -> None:
        nonlocal seen
        while True:
            seen = await state_of(client, job_id)
            if seen == state:
                return
            await asyncio.sleep(0.005)

    try:
        await asyncio.wait_for(poll(), 30)
    except asyncio.TimeoutError:
        raise AssertionError(f"job {job_id} is {seen}, never {state}") from None


def events_of(text: str) -> list[JobEvent]:
    events = []
    for block in text.split("\n\n"):
        data = [line[6:] for line in block.splitlines() if line.startswith("data: ")]
        if data:
            events.append(JobEvent.model_validate(json.loads(data[0])))
    return events


async def test_a_job_runs_to_success_with_progress_and_events(
    repository: Path, tmp_path: Path
) -> None:
    async with jobs_app(repository, tmp_path) as (_, client, kind):
        answer = await client.post("/v2/jobs", json={"type": "steps", "steps": 3})
        assert answer.status_code == 201, answer.text
        job = JobInfo.model_validate(answer.json())
        assert job.state == "queued" and job.progress.total == 3 and job.progress.unit == "epochs"
        for _ in range(3):
            kind.release.release()
        await wait_state(client, job.id, "succeeded")
        done = JobInfo.model_validate((await client.get(f"/v2/jobs/{job.id}")).json())
        assert done.result == {"steps": 3}
        assert done.progress.done == 3 and done.started and done.finished
        stream = await client.get(f"/v2/jobs/{job.id}/events")
        events = events_of(stream.text)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        states = [e.data["state"] for e in events if e.type == "state"]
        assert states == ["queued", "running", "succeeded"]
        assert [e.data["step"] for e in events if e.type == "step"] == [0, 1, 2]
        listed = (await client.get("/v2/jobs")).json()["jobs"]
        assert [j["id"] for j in listed] == [job.id]


async def test_a_failing_job_is_failed_with_its_reason(repository: Path, tmp_path: Path) -> None:
    async with jobs_app(repository, tmp_path) as (_, client, kind):
        job = (
            await client.post("/v2/jobs", json={"type": "steps", "steps": 1, "fail": True})
        ).json()
        kind.release.release()
        await wait_state(client, job["id"], "failed")
        assert (await client.get(f"/v2/jobs/{job['id']}")).json()["error"] == "told to fail"


async def test_bad_specs_are_400s_naming_the_problem(repository: Path, tmp_path: Path) -> None:
    async with jobs_app(repository, tmp_path) as (_, client, _kind):
        for body, words in [
            ({"steps": 1}, "'type'"),
            ({"type": "nope"}, "unknown job type 'nope'"),
            ({"type": "steps", "steps": 0}, "'steps' must be a positive integer"),
        ]:
            answer = await client.post("/v2/jobs", json=body)
            assert answer.status_code == 400
            assert words in answer.json()["error"]
        assert (await client.get("/v2/jobs/nope")).status_code == 404
        assert (await client.get("/v2/jobs")).json()["jobs"] == []


async def test_at_most_max_running_jobs_run_and_the_rest_wait_in_order(
    repository: Path, tmp_path: Path
) -> None:
    async with jobs_app(repository, tmp_path, max_running_jobs=2) as (_, client, kind):
        ids = [
            (await client.post("/v2/jobs", json={"type": "steps", "steps": 1})).json()["id"]
            for _ in range(4)
        ]
        await until(lambda: kind.running == 2)
        assert [await state_of(client, i) for i in ids] == [
            "running",
            "running",
            "queued",
            "queued",
        ]
        for _ in range(4):
            kind.release.release()
        for job_id in ids:
            await wait_state(client, job_id, "succeeded")
        assert kind.most_running == 2


async def test_cancel_a_running_and_a_queued_job(repository: Path, tmp_path: Path) -> None:
    async with jobs_app(repository, tmp_path, max_running_jobs=1) as (_, client, kind):
        first = (await client.post("/v2/jobs", json={"type": "steps", "steps": 5})).json()["id"]
        second = (await client.post("/v2/jobs", json={"type": "steps", "steps": 5})).json()["id"]
        await until(lambda: kind.running == 1)
        answer = await client.post(f"/v2/jobs/{second}/cancel")
        assert answer.status_code == 200 and answer.json()["state"] == "cancelled"
        assert (await client.post(f"/v2/jobs/{first}/cancel")).status_code == 200
        kind.release.release()  # the running job notices at its next step
        await wait_state(client, first, "cancelled")
        again = await client.post(f"/v2/jobs/{first}/cancel")
        assert again.status_code == 409 and "already cancelled" in again.json()["error"]
        assert kind.running == 0


async def test_a_retried_create_with_the_same_idempotency_key_returns_the_same_job(
    repository: Path, tmp_path: Path
) -> None:
    async with jobs_app(repository, tmp_path) as (_, client, kind):
        headers = {"Idempotency-Key": "create-1"}
        body = {"type": "steps", "steps": 1}
        first = await client.post("/v2/jobs", json=body, headers=headers)
        second = await client.post("/v2/jobs", json=body, headers=headers)
        assert (first.status_code, second.status_code) == (201, 200)
        assert first.json()["id"] == second.json()["id"]
        other = await client.post("/v2/jobs", json={**body, "steps": 2}, headers=headers)
        assert other.status_code == 409 and "already used" in other.json()["error"]
        fresh = await client.post("/v2/jobs", json=body, headers={"Idempotency-Key": "create-2"})
        assert fresh.status_code == 201 and fresh.json()["id"] != first.json()["id"]
        assert len((await client.get("/v2/jobs")).json()["jobs"]) == 2
        kind.release.release()
        kind.release.release()


@asynccontextmanager
async def jobs_server(
    repository: Path, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, StepKind]]:
    """The app on a real uvicorn (httpx's ASGI transport holds a streamed body until its end)."""
    app = create_app(
        Settings(repository=repository, model_control="explicit", data_dir=tmp_path / "data")
    )
    kind = StepKind()
    app.state.jobs.register(kind)
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        await until(lambda: server.started)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}") as client:
            yield client, kind
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 30)


async def test_the_event_stream_replays_after_last_event_id_and_follows_live(
    repository: Path, tmp_path: Path
) -> None:
    async with jobs_server(repository, tmp_path) as (client, kind):
        job_id = (await client.post("/v2/jobs", json={"type": "steps", "steps": 3})).json()["id"]
        kind.release.release()
        await until(lambda: kind.running == 1)
        received: list[JobEvent] = []

        async def follow() -> None:
            async with client.stream(
                "GET", f"/v2/jobs/{job_id}/events", headers={"Last-Event-ID": "2"}
            ) as stream:
                text = ""
                async for chunk in stream.aiter_text():
                    text += chunk
                    received[:] = events_of(text)

        follower = asyncio.create_task(follow())
        await until(lambda: any(e.type == "step" for e in received))
        assert received[0].seq == 3  # replayed from after event 2
        kind.release.release()
        kind.release.release()
        await asyncio.wait_for(follower, 30)  # the stream ends after the terminal event
        assert received[-1].type == "state" and received[-1].data["state"] == "succeeded"
        assert [e.seq for e in received] == list(range(3, received[-1].seq + 1))
        tail = events_of((await client.get(f"/v2/jobs/{job_id}/events?after=4")).text)
        assert [e.seq for e in tail] == [e.seq for e in received if e.seq > 4]


async def test_a_restart_asks_the_kind_what_becomes_of_running_jobs(
    repository: Path, tmp_path: Path
) -> None:
    store = JobStore(tmp_path / "data")
    job, _ = store.create("steps", {"steps": 2, "fail": False}, owner=None)
    store.set_state(job.id, "running", started=True)
    queued, _ = store.create("steps", {"steps": 1, "fail": False}, owner=None)
    store.close()
    async with jobs_app(repository, tmp_path) as (_, client, kind):
        await wait_state(client, job.id, "failed")
        info = (await client.get(f"/v2/jobs/{job.id}")).json()
        assert info["error"] == "interrupted by a server restart"
        kind.release.release()
        await wait_state(client, queued.id, "succeeded")


async def test_jobs_belong_to_their_key_and_need_the_jobs_scope(
    repository: Path, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.json"
    alice_key, _ = add_key(keys, "alice", ["jobs", "read"])
    bob_key, _ = add_key(keys, "bob", ["jobs", "read"])
    reader_key, _ = add_key(keys, "reader", ["read", "infer"])
    async with jobs_app(repository, tmp_path, api_keys_file=keys, admin_api_key="root") as (
        _,
        client,
        kind,
    ):
        body = {"type": "steps", "steps": 1}
        refused = await client.post("/v2/jobs", json=body, headers=bearer(reader_key))
        assert refused.status_code == 403 and "'jobs' scope" in refused.json()["error"]
        made = await client.post("/v2/jobs", json=body, headers=bearer(alice_key))
        assert made.status_code == 201 and made.json()["owner"] == "alice"
        job_id = made.json()["id"]
        assert (await client.get(f"/v2/jobs/{job_id}", headers=bearer(bob_key))).status_code == 404
        cancel = await client.post(f"/v2/jobs/{job_id}/cancel", headers=bearer(bob_key))
        assert cancel.status_code == 404
        assert (await client.get("/v2/jobs", headers=bearer(bob_key))).json()["jobs"] == []
        assert len((await client.get("/v2/jobs", headers=bearer("root"))).json()["jobs"]) == 1
        alice = await client.get(f"/v2/jobs/{job_id}", headers=bearer(alice_key))
        assert alice.status_code == 200
        kind.release.release()
        await until(lambda: kind.running == 0)


class ThreadedKind:
    """A kind with no ``initial_progress`` that reports from a worker thread (as a kind whose
    work runs in a child process, read by a thread, would)."""

    type = "threaded"

    def __init__(self) -> None:
        self.go = threading.Event()

    def validate(self, spec: dict[str, Any], ctx: ValidationContext) -> dict[str, Any]:
        return spec

    async def run(self, ctx: JobContext) -> dict[str, Any]:
        def work() -> None:
            self.go.wait(DEADLINE_S)
            ctx.set_progress(1, 2, "epochs")
            ctx.emit("metrics", {"epoch": 1, "loss": 0.5})
            ctx.set_progress(2, 2, "epochs")

        await asyncio.to_thread(work)
        return {"done": True}

    def on_restart(self, job: JobInfo) -> RestartPolicy:
        return "fail"


async def test_a_kind_may_report_from_a_worker_thread(repository: Path, tmp_path: Path) -> None:
    async with jobs_app(repository, tmp_path) as (app, client, _):
        kind = ThreadedKind()
        app.state.jobs.register(kind)
        answer = await client.post("/v2/jobs", json={"type": "threaded"})
        assert answer.status_code == 201, answer.text
        assert answer.json()["progress"]["total"] == 0  # no initial_progress: none shown
        queue = app.state.jobs.listen(answer.json()["id"])
        kind.go.set()
        await wait_state(client, answer.json()["id"], "succeeded")
        await until(lambda: queue.qsize() >= 4)
        seen = [queue.get_nowait() for _ in range(queue.qsize())]
        assert {"metrics", "progress"} <= {e.type for e in seen}
        info = JobInfo.model_validate((await client.get(f"/v2/jobs/{answer.json()['id']}")).json())
        assert info.progress.done == 2 and info.progress.unit == "epochs"
