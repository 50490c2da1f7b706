"""The job runner: runs the jobs the server was given, a bounded number at once, and keeps
their state in the :class:`~maas_server.job_store.JobStore`.

What a job does is up to its kind (:class:`JobKind`): the runner holds a registry
``{type: kind}`` (``"batch"``: :mod:`maas_server.batch_job`; ``"training"`` plugs in the same
way). A kind checks a spec when the job is created (:meth:`JobKind.validate`, raising a
:class:`~maas_server.errors.ServerError` that the route answers with), runs it
(:meth:`JobKind.run`, given a :class:`JobContext`) and says what becomes of a job that was
running when the server stopped (:meth:`JobKind.on_restart`).

Jobs wait in a first-come queue for one of ``max_running`` slots. Each state change, progress
step and kind-specific event is stored and handed to the listeners of the job's event stream
(``GET /v2/jobs/{id}/events``). Cancelling a queued job ends it at once; a running job is told
(:attr:`JobContext.cancelled`) and ends at its next check. When the server stops, running jobs
are left ``running`` in the store: at the next start each kind decides whether they resume.

Under ``maas serve --workers N`` the jobs run in one process, worker 0 (``runs_jobs``); the other
workers share its store: a create there stores the job ``queued``, a cancel there sets the job's
``cancel_requested`` flag (a queued job is cancelled at once, in the store), and an event stream
there reads the events the runner stores. The runner looks at the store every
:data:`SHARED_POLL_S` for queued jobs it does not hold yet and for cancels asked elsewhere; only
it resumes jobs at start (a replacement of a worker 0 that died included: it was the only
runner). One process alone does not look at the store: its creates and cancels are its own.

>>> runner = JobRunner(store, {"batch": BatchKind()}, ...)  # doctest: +SKIP
>>> await runner.start()  # in the app's lifespan  # doctest: +SKIP
>>> job, created = await runner.submit("batch", spec, owner="ci", idempotency_key=None)
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from maas_wire.jobs import TERMINAL_STATES, JobEvent, JobInfo, JobProgress

from .datasets import DatasetStore
from .errors import BadRequestError, ConflictError, ModelUnavailableError, ServerError
from .job_store import JOBS_FILE, JobStore, request_digest_of
from .repository import ModelRepository
from .settings import Settings

__all__ = [
    "STREAM_END",
    "JobCancelled",
    "JobContext",
    "JobFailed",
    "JobKind",
    "JobNotFoundError",
    "JobRunner",
    "RestartPolicy",
    "ValidationContext",
]

logger = logging.getLogger("maas_server.jobs")

RestartPolicy = Literal["resume", "fail", "restart"]
INTERRUPTED = "interrupted by a server restart"
_PROGRESS_EVERY_S = 0.25
SHARED_POLL_S = 0.1
"""How often the runner shared with other workers looks for the jobs and cancels they stored,
and how often an event stream looks for the events another process stored."""


class JobFailed(Exception):
    """Raised by a kind's ``run``: the job failed, for the reason given."""


class JobCancelled(Exception):
    """Raised by a kind's ``run`` when it noticed :attr:`JobContext.cancelled` and stopped."""


class JobNotFoundError(ServerError):
    status_code = 404


@dataclass
class ValidationContext:
    """What a kind may look at to check a spec: who asks, the models, the datasets.
    ``admin``: the key that asks sees every key's datasets."""

    owner: str | None
    repository: ModelRepository
    datasets: DatasetStore
    settings: Settings
    admin: bool = False

    def may_read(self, dataset_owner: str | None) -> bool:
        """Whether the key that asks may read a dataset ``dataset_owner`` uploaded."""
        return (
            self.admin or self.owner is None or dataset_owner is None or dataset_owner == self.owner
        )


class JobContext:
    """What a running job gets: its id and spec, events, progress, the cancel flag, the model
    repository, the datasets and a private scratch folder (``data_dir/jobs/<id>/``)."""

    def __init__(
        self,
        runner: JobRunner,
        job: JobInfo,
        *,
        repository: ModelRepository,
        datasets: DatasetStore,
        data_dir: Path,
    ) -> None:
        self.job_id = job.id
        self.job = job
        self.spec: Mapping[str, Any] = job.spec
        self.owner = job.owner
        self.repository = repository
        self.datasets = datasets
        self.data_dir = data_dir
        self.settings = runner.settings
        self._runner = runner
        self._cancelled = False
        self.progress = job.progress
        self._rate_mark: tuple[float, float] | None = None
        self._last_event = 0.0

    @property
    def cancelled(self) -> bool:
        """Whether the job was asked to stop (poll it between chunks or epochs)."""
        return self._cancelled

    def cancel(self) -> None:
        self._cancelled = True

    @property
    def store(self) -> JobStore:
        return self._runner.store

    def emit(self, type: str, data: Mapping[str, Any]) -> JobEvent:
        """Store an event of this job and hand it to the listeners of its stream."""
        return self._runner.emit(self.job_id, type, data)

    def measure(self, done: float, total: float, unit: str) -> JobProgress:
        """The progress at ``done`` of ``total``, with the rate since this run began and the
        time left at that rate (not stored: see :meth:`set_progress`)."""
        now = time.monotonic()
        if self._rate_mark is None:
            self._rate_mark = (now, done)
        since, base = self._rate_mark
        elapsed = now - since
        rate = (done - base) / elapsed if elapsed > 0 and done > base else None
        eta = (total - done) / rate if rate else None
        self.progress = JobProgress(unit=unit, done=done, total=total, rate=rate, eta_s=eta)
        return self.progress

    def start_rate(self, done: float) -> None:
        """Count the rate from here (``done`` units already done, by an earlier run)."""
        self._rate_mark = (time.monotonic(), done)

    def set_progress(self, done: float, total: float, unit: str) -> None:
        """Store the progress and tell the listeners (a ``progress`` event at most every
        quarter second, and always at the end)."""
        progress = self.measure(done, total, unit)
        self.store.set_progress(self.job_id, progress)
        self.progress_event(force=done >= total)

    def progress_event(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_event >= _PROGRESS_EVERY_S:
            self._last_event = now
            self.emit("progress", self.progress.model_dump())

    def log(self, message: str) -> None:
        self.emit("log", {"message": message})


class JobKind(Protocol):
    """One type of job (``"batch"``, ``"training"``).

    A kind may also define ``initial_progress(spec) -> JobProgress``: the progress a queued job
    shows (its total, in its unit); without it a queued job shows none.
    """

    type: str

    def validate(self, spec: dict[str, Any], ctx: ValidationContext) -> dict[str, Any]:
        """The spec, checked and completed with its defaults; raise a ServerError (400 naming
        the problem) to refuse it."""
        ...

    async def run(self, ctx: JobContext) -> dict[str, Any]:
        """Do the job; return its ``result``. Raise :class:`JobFailed` to fail it and
        :class:`JobCancelled` once it stopped because :attr:`JobContext.cancelled`."""
        ...

    def on_restart(self, job: JobInfo) -> RestartPolicy:
        """What becomes of a job that was running when the server stopped."""
        ...


class JobRunner:
    """Runs jobs of the registered kinds, at most ``settings.max_running_jobs`` at once."""

    def __init__(
        self,
        kinds: Mapping[str, JobKind],
        *,
        repository: ModelRepository,
        datasets: Callable[[], DatasetStore],
        data_dir: Path,
        settings: Settings,
    ) -> None:
        self._store: JobStore | None = None
        self.kinds = dict(kinds)
        self.repository = repository
        self._datasets = datasets
        self.data_dir = data_dir
        self.settings = settings
        self._slots: asyncio.Semaphore | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._contexts: dict[str, JobContext] = {}
        self._listeners: dict[str, set[asyncio.Queue[JobEvent]]] = {}
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._poll_task: asyncio.Task[None] | None = None
        worker = settings.worker
        self.shared = worker is not None and worker.count > 1
        """Whether other processes (workers) use the same store."""
        self.runs_jobs = worker is None or worker.index == 0
        """Whether jobs run in this process (with workers: only in worker 0)."""

    @property
    def store(self) -> JobStore:
        """The job store (``<data_dir>/jobs.sqlite3``), opened on first use (a server that runs
        no job makes no data folder)."""
        if self._store is None:
            try:
                self._store = JobStore(self.data_dir)
            except (OSError, sqlite3.Error) as exc:
                raise ModelUnavailableError(
                    f"jobs are unavailable: the data folder {self.data_dir} cannot be used: {exc}"
                ) from None
        return self._store

    @property
    def datasets(self) -> DatasetStore:
        """The server's dataset store (the one its routes use: a version a job reads is held
        open there, and cannot be deleted)."""
        return self._datasets()

    def register(self, kind: JobKind) -> None:
        """Add a kind of job (before :meth:`start`)."""
        self.kinds[kind.type] = kind

    # --- lifetime ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Pick up what the last run of the server left: running jobs are resumed, restarted or
        failed as their kind says; queued ones are queued again."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._slots = asyncio.Semaphore(max(1, self.settings.max_running_jobs))
        self._stopping = False
        if not self.runs_jobs:
            return  # the runner (worker 0) resumes them
        if self.shared:
            self._poll_task = self._loop.create_task(self._poll(), name="maas-jobs-poll")
        if self._store is None and not (self.data_dir / JOBS_FILE).exists():
            return  # no job was ever made here
        try:
            store = await asyncio.to_thread(lambda: self.store)
        except ServerError as exc:
            logger.warning("%s", exc.message)
            return
        for job in await asyncio.to_thread(store.in_state, "running", "queued"):
            kind = self.kinds.get(job.type)
            if kind is None:
                self._finish(job.id, "failed", error=f"no job kind {job.type!r} on this server")
                continue
            if job.state == "running":
                policy = kind.on_restart(job)
                if policy == "fail":
                    self._finish(job.id, "failed", error=INTERRUPTED)
                    continue
                if policy == "restart":
                    await asyncio.to_thread(self.store.clear_chunks, job.id)
                self.emit(job.id, "log", {"message": f"{INTERRUPTED}: {policy}"})
            self._enqueue(job)

    async def stop(self) -> None:
        """Stop running jobs without changing their state (they resume at the next start)."""
        self._stopping = True
        if self._poll_task is not None:
            self._poll_task.cancel()
            await asyncio.gather(self._poll_task, return_exceptions=True)
            self._poll_task = None
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for queues in self._listeners.values():
            for queue in queues:
                queue.put_nowait(STREAM_END)
        if self._store is not None:
            self._store.close()
            self._store = None

    # --- jobs -------------------------------------------------------------------------------

    def validation_context(self, owner: str | None, *, admin: bool = False) -> ValidationContext:
        return ValidationContext(owner, self.repository, self.datasets, self.settings, admin)

    async def submit(
        self,
        spec: Mapping[str, Any],
        *,
        owner: str | None,
        idempotency_key: str | None = None,
        admin: bool = False,
    ) -> tuple[JobInfo, bool]:
        """Check and queue a job (``spec["type"]`` names its kind); True if it is new, False
        if ``idempotency_key`` found the job an earlier create made."""
        body = dict(spec)
        type_ = body.pop("type", None)
        if not isinstance(type_, str):
            raise BadRequestError(
                f"a job needs a 'type': one of {sorted(self.kinds)}; got {type_!r}"
            )
        kind = self.kinds.get(type_)
        if kind is None:
            raise BadRequestError(
                f"unknown job type {type_!r}; this server runs {sorted(self.kinds)}"
            )
        if idempotency_key is not None and not 0 < len(idempotency_key) <= 255:
            raise BadRequestError("Idempotency-Key must be 1 to 255 characters")
        digest = request_digest_of(type_, body)
        if idempotency_key is not None:
            earlier = await asyncio.to_thread(self.store.find, owner, idempotency_key, digest)
            if earlier is not None:
                return earlier, False
        ctx = self.validation_context(owner, admin=admin)
        checked = await asyncio.to_thread(kind.validate, body, ctx)
        job, created = await asyncio.to_thread(
            self.store.create,
            type_,
            checked,
            owner=owner,
            idempotency_key=idempotency_key,
            progress=_initial_progress(kind, checked),
            request_digest=digest,
        )
        if created:
            self.emit(job.id, "state", {"state": "queued"})
            if self.runs_jobs:
                self._enqueue(job)
        return job, created

    def get(self, job_id: str) -> JobInfo:
        job = self.store.get(job_id)
        if job is None:
            raise JobNotFoundError(f"no job {job_id!r}")
        return job

    async def cancel(self, job_id: str) -> JobInfo:
        """Cancel a queued job (at once) or a running one (at its next check); 409 when it is
        already over. A job running in another process (the runner worker) is told through the
        store."""
        job = self.get(job_id)
        if job.state in TERMINAL_STATES:
            raise ConflictError(f"job {job_id} is already {job.state}")
        ctx = self._contexts.get(job_id)
        if ctx is not None:
            ctx.cancel()
            ctx.log("cancel requested")
            return self.get(job_id)
        task = self._tasks.pop(job_id, None)
        if task is not None:  # waiting here for a slot
            task.cancel()
            self._finish(job_id, "cancelled")
            return self.get(job_id)
        state, event = await asyncio.to_thread(self.store.request_cancel, job_id)
        if state in TERMINAL_STATES:
            raise ConflictError(f"job {job_id} is already {state}")
        if event is not None:  # it was queued: cancelled now
            self._deliver(job_id, event)
        # running in the runner worker: it logs "cancel requested" when it sees the flag
        return self.get(job_id)

    # --- events -----------------------------------------------------------------------------

    def emit(self, job_id: str, type_: str, data: Mapping[str, Any]) -> JobEvent:
        """Store an event and hand it to the job's listeners; safe to call from any thread (a
        kind's worker thread, say)."""
        event = self.store.add_event(job_id, type_, data)
        self._deliver(job_id, event)
        return event

    def _deliver(self, job_id: str, event: JobEvent) -> None:
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            loop.call_soon_threadsafe(self._fan_out, job_id, event)
        else:
            self._fan_out(job_id, event)

    def _fan_out(self, job_id: str, event: JobEvent) -> None:
        for queue in self._listeners.get(job_id, ()):
            queue.put_nowait(event)

    def listen(self, job_id: str) -> asyncio.Queue[JobEvent]:
        """A queue that receives the job's events from now on (:meth:`unlisten` it)."""
        queue: asyncio.Queue[JobEvent] = asyncio.Queue()
        self._listeners.setdefault(job_id, set()).add(queue)
        return queue

    def unlisten(self, job_id: str, queue: asyncio.Queue[JobEvent]) -> None:
        queues = self._listeners.get(job_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._listeners[job_id]

    # --- running ----------------------------------------------------------------------------

    async def _poll(self) -> None:
        """The runner shared with other workers: queue the jobs they stored, pass on the
        cancels they asked for (every :data:`SHARED_POLL_S`)."""
        while not self._stopping:
            await asyncio.sleep(SHARED_POLL_S)
            if self._store is None and not (self.data_dir / JOBS_FILE).exists():
                continue
            try:
                queued, cancels = await asyncio.to_thread(lambda: self.store.pending())
            except Exception:
                logger.exception("looking for jobs stored by the other workers")
                continue
            if self._stopping:
                return
            for job in queued:
                if job.id in self._tasks:
                    continue
                if job.type in self.kinds:
                    self._enqueue(job)
                else:
                    self._finish(job.id, "failed", error=f"no job kind {job.type!r} here")
            for job_id in cancels:
                ctx = self._contexts.get(job_id)
                if ctx is not None and not ctx.cancelled:
                    ctx.cancel()
                    ctx.log("cancel requested")

    def _enqueue(self, job: JobInfo) -> None:
        assert self._loop is not None, "JobRunner.start() first"
        if job.id in self._tasks:
            return  # the look at the store found the job this process queued itself
        task = self._loop.create_task(self._run(job), name=f"maas-job-{job.id}")
        self._tasks[job.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job.id, None))

    def _finish(
        self,
        job_id: str,
        state: str,
        *,
        error: str | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> None:
        data: dict[str, Any] = {"state": state}
        if error is not None:
            data["error"] = error
        if result is not None:
            data["result"] = dict(result)
        event = self.store.set_state(
            job_id, state, error=error, result=result, finished=True, event=data
        )
        assert event is not None
        self._deliver(job_id, event)

    async def _run(self, job: JobInfo) -> None:
        assert self._slots is not None
        async with self._slots:
            if self._stopping:
                return
            cancel_asked = self.store.claim(job.id, resume=job.state == "running")
            current = self.store.get(job.id)
            if cancel_asked is None or current is None:
                return  # cancelled while it waited
            kind = self.kinds[job.type]
            scratch = self.data_dir / "jobs" / job.id
            scratch.mkdir(parents=True, exist_ok=True)
            ctx = JobContext(
                self,
                current,
                repository=self.repository,
                datasets=self.datasets,
                data_dir=scratch,
            )
            self._contexts[job.id] = ctx
            self.emit(job.id, "state", {"state": "running"})
            if cancel_asked:  # through another worker, before the job began here
                ctx.cancel()
                ctx.log("cancel requested")
            try:
                result = await kind.run(ctx)
            except asyncio.CancelledError:
                if self._stopping:
                    raise  # the server stops: the job stays "running" and resumes next time
                self._finish(job.id, "cancelled")
                raise
            except JobCancelled:
                self._finish(job.id, "cancelled")
            except JobFailed as exc:
                self._finish(job.id, "failed", error=str(exc))
            except ServerError as exc:
                self._finish(job.id, "failed", error=exc.message)
            except Exception as exc:
                logger.exception("job %s (%s) failed", job.id, job.type)
                self._finish(job.id, "failed", error=f"{type(exc).__name__}: {exc}")
            else:
                if ctx.cancelled:
                    self._finish(job.id, "cancelled")
                else:
                    self._finish(job.id, "succeeded", result=result)
            finally:
                self._contexts.pop(job.id, None)
            current = self.store.get(job.id)
            if current is not None and current.state in TERMINAL_STATES:
                await asyncio.to_thread(shutil.rmtree, scratch, True)


def _initial_progress(kind: JobKind, spec: Mapping[str, Any]) -> JobProgress:
    initial = getattr(kind, "initial_progress", None)
    progress = initial(spec) if initial is not None else None
    return progress if isinstance(progress, JobProgress) else JobProgress()


class _End:
    pass


STREAM_END: Any = _End()
"""Put in the listeners' queues when the runner stops: their streams end."""
