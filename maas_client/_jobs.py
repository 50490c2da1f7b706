"""What the job calls send and how their answers are read (no I/O: both clients use these).

``client.jobs`` (``_async/_jobs.py``) creates, lists, follows and cancels jobs; this module has
their plans, the parsers of their answers, and the text and notebook display of a job.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import orjson

from maas_wire.jobs import TERMINAL_STATES, JobEvent, JobInfo, JobList

from ._answers import Answer, parse_model
from ._exceptions import InputError, MaasError
from ._html import block, e, table
from ._plans import JSON_HEADERS, RequestPlan
from ._types import VersionLike

__all__ = [
    "IDEMPOTENCY_HEADER",
    "JobError",
    "batch_spec",
    "is_terminal",
    "job_html",
    "job_repr",
    "jobs_html",
    "parse_job",
    "parse_job_event",
    "parse_jobs",
    "plan_cancel_job",
    "plan_create_job",
    "plan_get_job",
    "plan_job_events",
    "plan_list_jobs",
]

IDEMPOTENCY_HEADER = "Idempotency-Key"

parse_job = parse_model(JobInfo)


class JobError(MaasError):
    """A job's result was asked for, but the job failed or was cancelled (``job``: its
    :class:`~maas_client.types.JobInfo`)."""

    def __init__(self, message: str, job: JobInfo) -> None:
        super().__init__(message)
        self.job = job


def parse_jobs(answer: Answer) -> list[JobInfo]:
    return parse_model(JobList)(answer).jobs


def parse_job_event(data: Any) -> JobEvent:
    return JobEvent.model_validate(data)


def is_terminal(event: JobEvent) -> bool:
    """Whether ``event`` says the job is over."""
    return event.type == "state" and event.data.get("state") in TERMINAL_STATES


def _job_path(job_id: str, suffix: str = "") -> str:
    if not isinstance(job_id, str) or not job_id:
        raise InputError("a job id is a non-empty string")
    return f"/v2/jobs/{quote(job_id, safe='')}{suffix}"


def batch_spec(
    model: str,
    dataset: str,
    *,
    version: VersionLike,
    dataset_version: int | None,
    inputs: Mapping[str, str | Sequence[str]] | None,
    outputs: Sequence[str] | None,
    batch_size: int | None,
    chunk_rows: int | None,
    concurrency: int | None,
    priority: int | None,
    stop_on_error: bool,
    endpoints: Sequence[str] | None,
    result_name: str | None,
) -> dict[str, Any]:
    """The body of ``POST /v2/jobs`` for a batch job (``None`` leaves the server's default)."""
    spec: dict[str, Any] = {"type": "batch", "model": model, "dataset": dataset}
    optional: dict[str, Any] = {
        "version": None if version is None or version == "" else str(version),
        "dataset_version": dataset_version,
        "inputs": (
            {k: v if isinstance(v, str) else list(v) for k, v in inputs.items()}
            if inputs is not None
            else None
        ),
        "outputs": list(outputs) if outputs is not None else None,
        "batch_size": batch_size,
        "chunk_rows": chunk_rows,
        "concurrency": concurrency,
        "priority": priority,
        "endpoints": list(endpoints) if endpoints is not None else None,
        "result_name": result_name,
    }
    spec.update({k: v for k, v in optional.items() if v is not None})
    if stop_on_error:
        spec["stop_on_error"] = True
    return spec


def plan_create_job(spec: Mapping[str, Any], idempotency_key: str | None) -> RequestPlan:
    """A create carries an idempotency key (made here when not given, once per call, so that
    every retry of the call sends the same one): retrying it cannot make a second job."""
    key = idempotency_key or uuid.uuid4().hex
    return RequestPlan(
        "POST",
        "/v2/jobs",
        content=orjson.dumps(dict(spec)),
        headers={**JSON_HEADERS, IDEMPOTENCY_HEADER: key},
        idempotent=True,
    )


def plan_list_jobs() -> RequestPlan:
    return RequestPlan("GET", "/v2/jobs")


def plan_get_job(job_id: str) -> RequestPlan:
    return RequestPlan("GET", _job_path(job_id))


def plan_cancel_job(job_id: str) -> RequestPlan:
    return RequestPlan("POST", _job_path(job_id, "/cancel"), idempotent=True)


def plan_job_events(job_id: str, after: int, follow: bool = True) -> RequestPlan:
    headers = {"Accept": "text/event-stream"}
    if after:
        headers["Last-Event-ID"] = str(after)
    suffix = "/events" if follow else "/events?follow=false"
    return RequestPlan("GET", _job_path(job_id, suffix), headers=headers)


# --- display ------------------------------------------------------------------------------------


def _progress_text(info: JobInfo) -> str:
    p = info.progress
    text = f"{p.done:g}/{p.total:g} {p.unit}"
    if p.total:
        text += f" ({100 * p.done / p.total:.0f}%)"
    if p.rate and info.state == "running":
        text += f", {p.rate:,.0f} {p.unit}/s"
        if p.eta_s is not None:
            text += f", {p.eta_s:,.0f} s left"
    return text


def job_repr(info: JobInfo) -> str:
    parts = [f"{info.type} job {info.id}", info.state, _progress_text(info)]
    if info.error:
        parts.append(f"error: {info.error}")
    if info.result:
        parts.append(f"result: {info.result}")
    return "<" + ", ".join(parts) + ">"


def job_html(info: JobInfo) -> str:
    facts = [
        ("state", info.state),
        ("progress", _progress_text(info)),
        ("owner", info.owner or "-"),
        ("created", info.created),
    ]
    if info.finished:
        facts.append(("finished", info.finished))
    if info.error:
        facts.append(("error", info.error))
    if info.result:
        facts.append(("result", ", ".join(f"{k}={v}" for k, v in info.result.items())))
    tables = []
    if info.chunk_errors:
        tables.append(
            table(
                ["rows", "error"],
                [(f"{c.start}:{c.stop}", c.error) for c in info.chunk_errors[:20]],
                caption=f"{len(info.chunk_errors)} failed chunk(s)",
            )
        )
    return block(f"{e(info.type)} job {e(info.id)}", facts, tables)


def jobs_html(infos: Sequence[JobInfo]) -> str:
    return table(
        ["id", "type", "state", "progress", "created"],
        [(i.id, i.type, i.state, _progress_text(i), i.created) for i in infos],
        caption=f"{len(infos)} job(s)",
    )
