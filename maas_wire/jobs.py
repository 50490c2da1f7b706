"""Wire models of jobs: batch inference and training runs that the server carries out on its own.

``POST /v2/jobs`` creates one (``{"type": "batch", ...}``), ``GET /v2/jobs[/{id}]`` describes
them (:class:`JobList`, :class:`JobInfo`), ``GET /v2/jobs/{id}/events`` streams its
:class:`JobEvent` as server-sent events and ``POST /v2/jobs/{id}/cancel`` stops it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "TERMINAL_STATES",
    "ChunkError",
    "JobEvent",
    "JobInfo",
    "JobList",
    "JobProgress",
    "JobState",
    "JobType",
]

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JobType = Literal["batch", "training"]
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
"""States a job never leaves."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class JobProgress(_Message):
    """How far a job is: ``done`` of ``total`` ``unit`` (rows for batch jobs, epochs for
    training), the recent ``rate`` in units per second and the estimated seconds left."""

    unit: Literal["rows", "epochs"] | str = "rows"
    done: float = 0
    total: float = 0
    rate: float | None = None
    eta_s: float | None = None


class ChunkError(_Message):
    """A chunk of rows that failed (its rows have no results) and why."""

    start: int
    stop: int
    error: str


class JobInfo(_Message):
    """One job: what was asked (``spec``), where it stands and, once it succeeded, ``result``
    (batch: ``{"dataset": name, "version": v}``; training: ``{"model": name, "version": v,
    "metrics": {...}}``)."""

    id: str
    type: str
    state: JobState
    owner: str | None = None
    created: str
    started: str | None = None
    finished: str | None = None
    spec: dict[str, Any] = Field(default_factory=dict)
    progress: JobProgress = Field(default_factory=JobProgress)
    result: dict[str, Any] | None = None
    error: str | None = None
    chunk_errors: list[ChunkError] = Field(default_factory=list)

    @property
    def done(self) -> bool:
        """Whether the job is over (succeeded, failed or cancelled)."""
        return self.state in TERMINAL_STATES


class JobList(_Message):
    """``GET /v2/jobs``: the jobs the caller may see, newest first."""

    jobs: list[JobInfo] = Field(default_factory=list)


class JobEvent(_Message):
    """One event of a job, numbered from 1 (the SSE ``id``): ``state`` (data: ``state``,
    ``error``), ``progress`` (data: a :class:`JobProgress`), ``chunk_error`` (data: a
    :class:`ChunkError`), ``log`` (data: ``message``) and what the job's kind adds."""

    seq: int
    time: str
    type: str
    data: dict[str, Any] = Field(default_factory=dict)
