"""HTTP endpoints of jobs (see :mod:`maas_server.jobs`).

- ``POST /v2/jobs``: create; the body is ``{"type": "batch" | "training", ...spec}``. With an
  ``Idempotency-Key`` header, a second create with the same key (and API key) returns the first
  job: 201 for a new job, 200 for the one that was there.
- ``GET /v2/jobs``: the caller's jobs (an ``admin`` key: everyone's), newest first;
  ``GET /v2/jobs/{id}``: one.
- ``GET /v2/jobs/{id}/events``: the job's events as server-sent events (``id:`` is the event's
  number). A client that reconnects with ``Last-Event-ID`` (or ``?after=N``) gets the events after
  that one; the stream ends after the event that says the job is over (with ``?follow=false``:
  once the events so far are sent). With several workers, a stream on a worker that does not run
  the job reads the events the runner stores, as they come (every ``SHARED_POLL_S``).
- ``POST /v2/jobs/{id}/cancel``.

Creating and cancelling need the ``jobs`` scope, reading the ``read`` scope; a job belongs to the
name of the key that created it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from maas_wire.jobs import TERMINAL_STATES, JobEvent, JobInfo, JobList

from .auth import request_key
from .errors import BadRequestError
from .jobs import SHARED_POLL_S, STREAM_END, JobNotFoundError, JobRunner
from .request_body import read_json
from .shutdown import Shutdown
from .sse import EventStreamResponse

__all__ = ["IDEMPOTENCY_HEADER", "job_routes", "runner"]

IDEMPOTENCY_HEADER = "idempotency-key"
KEEPALIVE_S = 15.0


def runner(request: Request) -> JobRunner:
    found: JobRunner = request.app.state.jobs
    return found


def _json(content: object, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


def _owner(request: Request) -> tuple[str | None, bool]:
    """The caller's key name and whether it sees every job (an admin key, or no access
    control)."""
    key = request_key(request)
    if key is None:
        return None, True
    return key.name, "admin" in key.scopes


def _visible(request: Request, job_id: str) -> JobInfo:
    job = runner(request).get(job_id)
    owner, everyone = _owner(request)
    if not everyone and job.owner != owner:
        raise JobNotFoundError(f"no job {job_id!r}")
    return job


async def create_job(request: Request) -> Response:
    body = await read_json(request, required=True)
    owner, everyone = _owner(request)
    key = request.headers.get(IDEMPOTENCY_HEADER)
    job, created = await runner(request).submit(
        body, owner=owner, idempotency_key=key, admin=everyone
    )
    return _json(job.model_dump(), 201 if created else 200)


async def list_jobs(request: Request) -> Response:
    owner, everyone = _owner(request)
    jobs = await asyncio.to_thread(runner(request).store.list_jobs, owner, everyone=everyone)
    return _json(JobList(jobs=jobs).model_dump())


async def get_job(request: Request) -> Response:
    return _json(_visible(request, request.path_params["job_id"]).model_dump())


async def cancel_job(request: Request) -> Response:
    job = _visible(request, request.path_params["job_id"])
    return _json((await runner(request).cancel(job.id)).model_dump())


def _after(request: Request) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise BadRequestError(f"Last-Event-ID / after must be an event number, not {raw!r}")
    return int(raw)


def _frame(event: JobEvent) -> bytes:
    return (
        f"id: {event.seq}\nevent: {event.type}\n".encode()
        + b"data: "
        + orjson.dumps(event.model_dump())
        + b"\n\n"
    )


def _ends(event: JobEvent) -> bool:
    return event.type == "state" and event.data.get("state") in TERMINAL_STATES


async def _stream(
    jobs: JobRunner, job_id: str, after: int, follow: bool, queue: asyncio.Queue[JobEvent]
) -> AsyncIterator[bytes]:
    """The frames of a job's event stream: the events after ``after``, then (``follow``) the
    new ones until the job is over; ``STREAM_END`` in ``queue`` ends it."""
    last = after
    for event in await asyncio.to_thread(jobs.store.events, job_id, after):
        last = event.seq
        yield _frame(event)
        if _ends(event):
            return
    if not follow:
        return
    current = await asyncio.to_thread(jobs.store.get, job_id)
    if current is not None and current.state in TERMINAL_STATES and queue.empty():
        # over: its last event is stored with its state, and was replayed (or came since)
        for event in await asyncio.to_thread(jobs.store.events, job_id, last):
            yield _frame(event)
        return
    # with other workers, events may be stored by another process: look at the store too
    wait_s = SHARED_POLL_S if jobs.shared else KEEPALIVE_S
    sent_at = time.monotonic()
    while True:
        try:
            found = [await asyncio.wait_for(queue.get(), wait_s)]
        except asyncio.TimeoutError:
            found = []
            if jobs.shared:
                found = await asyncio.to_thread(jobs.store.events, job_id, last)
            if not found and time.monotonic() - sent_at >= KEEPALIVE_S:
                sent_at = time.monotonic()
                yield b": keep-alive\n\n"
        for event in found:
            if event is STREAM_END:
                return
            if event.seq <= last:
                continue
            if event.seq > last + 1 and jobs.shared:  # one stored elsewhere came between
                for missed in await asyncio.to_thread(jobs.store.events, job_id, last):
                    if missed.seq >= event.seq:
                        break
                    last = missed.seq
                    yield _frame(missed)
                    if _ends(missed):
                        return
            last = event.seq
            sent_at = time.monotonic()
            yield _frame(event)
            if _ends(event):
                return


async def job_events(request: Request) -> Response:
    job = _visible(request, request.path_params["job_id"])
    after = _after(request)
    follow = request.query_params.get("follow", "true").lower() not in ("0", "false", "no")
    jobs = runner(request)
    queue = jobs.listen(job.id)  # before the replay, so that nothing falls between the two
    shutdown: Shutdown | None = getattr(request.app.state, "shutdown", None)
    unsubscribe = shutdown.subscribe(lambda: queue.put_nowait(STREAM_END)) if shutdown else None

    async def events() -> AsyncIterator[bytes]:
        try:
            async for frame in _stream(jobs, job.id, after, follow, queue):
                yield frame
        finally:
            jobs.unlisten(job.id, queue)
            if unsubscribe is not None:
                unsubscribe()

    return EventStreamResponse(events(), on_disconnect=lambda: queue.put_nowait(STREAM_END))


job_routes: list[Route] = [
    Route("/v2/jobs", create_job, methods=["POST"]),
    Route("/v2/jobs", list_jobs, methods=["GET"]),
    Route("/v2/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/v2/jobs/{job_id}/events", job_events, methods=["GET"]),
    Route("/v2/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
]
