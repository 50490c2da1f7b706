"""The jobs' state on disk: one SQLite database (WAL) at ``<data_dir>/jobs.sqlite3``.

Three tables: ``jobs`` (one row per job: spec, state, progress, result), ``chunks`` (the row
ranges a job has committed, done or failed, so that a job resumed after a crash skips them) and
``events`` (each job's numbered events, replayed to a client that reconnects). Every write is its
own transaction with ``synchronous=FULL``: once a method returns, what it wrote survives a
``kill -9`` and a power cut.

Several processes may share the database (``maas serve --workers N``): one runs the jobs, the
others create them (``queued``), ask for a cancel (:meth:`JobStore.request_cancel`) and read
the events that the runner writes.

A create carries an optional idempotency key: a second create with the same key and owner returns
the first job instead of making another (a client retrying a create whose answer it lost).

>>> store = JobStore(Path("data"))  # doctest: +SKIP
>>> job, created = store.create("batch", {"model": "mlp"}, owner="ci", idempotency_key="k1")
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from maas_wire.jobs import ChunkError, JobEvent, JobInfo, JobProgress

from .errors import ConflictError

__all__ = ["JOBS_FILE", "Chunk", "JobStore", "request_digest_of", "utc_now"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    owner TEXT,
    created TEXT NOT NULL,
    started TEXT,
    finished TEXT,
    spec TEXT NOT NULL,
    progress TEXT NOT NULL,
    result TEXT,
    error TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT,
    idempotency_owner TEXT,
    request_digest TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency
    ON jobs (idempotency_owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE TABLE IF NOT EXISTS chunks (
    job_id TEXT NOT NULL,
    start INTEGER NOT NULL,
    stop INTEGER NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    part TEXT,
    PRIMARY KEY (job_id, start, state)
);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time TEXT NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
"""


JOBS_FILE = "jobs.sqlite3"


def utc_now() -> str:
    """Now, as ISO 8601 UTC with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Chunk:
    """A committed row range of a job: ``done`` (its results are in ``part``) or ``failed``."""

    start: int
    stop: int
    state: str
    error: str | None = None
    part: str | None = None


def request_digest_of(type_: str, spec: Mapping[str, Any]) -> str:
    """What tells two create requests apart (for idempotency keys)."""
    return hashlib.sha256(orjson.dumps([type_, spec], option=orjson.OPT_SORT_KEYS)).hexdigest()


class JobStore:
    """The jobs, their committed chunks and their events, in ``<root>/jobs.sqlite3``.

    Safe to call from several threads (one connection behind a lock; each call is short).
    """

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / JOBS_FILE
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """A database made before ``cancel_requested`` existed gets it (two processes may
        both try: the second finds it there)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "cancel_requested" not in columns:
            try:
                self._db.execute(
                    "ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0"
                )
            except sqlite3.OperationalError:
                columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
                if "cancel_requested" not in columns:
                    raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # --- jobs -------------------------------------------------------------------------------

    def create(
        self,
        type_: str,
        spec: Mapping[str, Any],
        *,
        owner: str | None,
        idempotency_key: str | None = None,
        progress: JobProgress | None = None,
        request_digest: str | None = None,
    ) -> tuple[JobInfo, bool]:
        """A new queued job, and True; or, when ``idempotency_key`` was used before by the same
        owner, that job and False (409 if it was used for a different request: one whose
        ``request_digest``, by default the digest of ``type_`` and ``spec``, differs)."""
        digest = request_digest or request_digest_of(type_, spec)
        job_id = uuid.uuid4().hex
        owner_key = owner or ""
        with self._transaction() as db:
            if idempotency_key is not None:
                row = db.execute(
                    "SELECT id, request_digest FROM jobs "
                    "WHERE idempotency_owner = ? AND idempotency_key = ?",
                    (owner_key, idempotency_key),
                ).fetchone()
                if row is not None:
                    return self._same_request(db, row, idempotency_key, digest), False
            db.execute(
                "INSERT INTO jobs (id, type, state, owner, created, spec, progress, "
                "idempotency_key, idempotency_owner, request_digest) "
                "VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    type_,
                    owner,
                    utc_now(),
                    orjson.dumps(dict(spec)).decode(),
                    (progress or JobProgress()).model_dump_json(),
                    idempotency_key,
                    owner_key if idempotency_key is not None else None,
                    digest,
                ),
            )
            job = self._get(db, job_id)
        assert job is not None
        return job, True

    def find(self, owner: str | None, idempotency_key: str, request_digest: str) -> JobInfo | None:
        """The job an earlier create with this key and owner made (409 if that create asked
        for something else), or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, request_digest FROM jobs "
                "WHERE idempotency_owner = ? AND idempotency_key = ?",
                (owner or "", idempotency_key),
            ).fetchone()
            if row is None:
                return None
            return self._same_request(self._db, row, idempotency_key, request_digest)

    def _same_request(
        self, db: sqlite3.Connection, row: Sequence[Any], key: str, digest: str
    ) -> JobInfo:
        if row[1] != digest:
            raise ConflictError(
                f"Idempotency-Key {key!r} was already used for a different job ({row[0]}); "
                "use a new key for a new job"
            )
        existing = self._get(db, row[0])
        assert existing is not None
        return existing

    def get(self, job_id: str) -> JobInfo | None:
        with self._lock:
            return self._get(self._db, job_id)

    def _get(self, db: sqlite3.Connection, job_id: str) -> JobInfo | None:
        row = db.execute(
            "SELECT id, type, state, owner, created, started, finished, spec, progress, result, "
            "error FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        if row is None:
            return None
        errors = db.execute(
            "SELECT start, stop, error FROM chunks WHERE job_id = ? AND state = 'failed' "
            "ORDER BY start",
            (job_id,),
        ).fetchall()
        return self._info(row, errors)

    @staticmethod
    def _info(row: Sequence[Any], errors: Sequence[Sequence[Any]]) -> JobInfo:
        return JobInfo(
            id=row[0],
            type=row[1],
            state=row[2],
            owner=row[3],
            created=row[4],
            started=row[5],
            finished=row[6],
            spec=orjson.loads(row[7]),
            progress=JobProgress.model_validate_json(row[8]),
            result=orjson.loads(row[9]) if row[9] is not None else None,
            error=row[10],
            chunk_errors=[ChunkError(start=s, stop=e, error=m) for s, e, m in errors],
        )

    def list_jobs(self, owner: str | None = None, *, everyone: bool = False) -> list[JobInfo]:
        """The jobs of ``owner`` (every job with ``everyone``), newest first."""
        query = (
            "SELECT id, type, state, owner, created, started, finished, spec, progress, result, "
            "error FROM jobs"
        )
        params: tuple[Any, ...] = ()
        if not everyone:
            query += " WHERE owner IS ?"
            params = (owner,)
        query += " ORDER BY created DESC, rowid DESC"
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
            failed: dict[str, list[Any]] = {}
            for job_id, start, stop, error in self._db.execute(
                "SELECT job_id, start, stop, error FROM chunks WHERE state = 'failed' "
                "ORDER BY start"
            ):
                failed.setdefault(job_id, []).append((start, stop, error))
        return [self._info(row, failed.get(row[0], [])) for row in rows]

    def in_state(self, *states: str) -> list[JobInfo]:
        """The jobs in one of ``states``, oldest first."""
        marks = ",".join("?" * len(states))
        with self._lock:
            ids = [
                r[0]
                for r in self._db.execute(
                    f"SELECT id FROM jobs WHERE state IN ({marks}) ORDER BY created, rowid",
                    states,
                )
            ]
            jobs = [self._get(self._db, i) for i in ids]
        return [j for j in jobs if j is not None]

    def set_state(
        self,
        job_id: str,
        state: str,
        *,
        error: str | None = None,
        result: Mapping[str, Any] | None = None,
        started: bool = False,
        finished: bool = False,
        event: Mapping[str, Any] | None = None,
    ) -> JobEvent | None:
        """Set the job's state; with ``event``, add a ``state`` event with that data in the same
        transaction (a reader never sees the state without its event) and return it."""
        sets = ["state = ?"]
        params: list[Any] = [state]
        if error is not None:
            sets.append("error = ?")
            params.append(error)
        if result is not None:
            sets.append("result = ?")
            params.append(orjson.dumps(dict(result)).decode())
        if started:
            sets.append("started = COALESCE(started, ?)")
            params.append(utc_now())
        if finished:
            sets.append("finished = ?")
            params.append(utc_now())
        with self._transaction() as db:
            db.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*params, job_id))
            if event is not None:
                return self._add_event(db, job_id, "state", event)
        return None

    def claim(self, job_id: str, *, resume: bool = False) -> bool | None:
        """Mark a queued job (with ``resume``: or a running one, left by the last run of the
        server) ``running`` for the runner that is about to run it: None when it is no longer
        in that state (cancelled, or already taken), else whether a cancel was asked for."""
        states = ("queued", "running") if resume else ("queued", "queued")
        with self._transaction() as db:
            row = db.execute(
                "SELECT cancel_requested FROM jobs WHERE id = ? AND state IN (?, ?)",
                (job_id, *states),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', started = COALESCE(started, ?) WHERE id = ?",
                (utc_now(), job_id),
            )
        return bool(row[0])

    def request_cancel(self, job_id: str) -> tuple[str, JobEvent | None]:
        """Cancel a job, in one transaction: a queued one is ``cancelled`` at once (with its
        ``state`` event, returned); a running one gets the ``cancel_requested`` flag that its
        runner honours at its next look. The state the job was in: ``queued``, ``running``, or
        a terminal one (nothing changed)."""
        with self._transaction() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return "", None
            state = str(row[0])
            if state == "queued":
                db.execute(
                    "UPDATE jobs SET state = 'cancelled', finished = ? WHERE id = ?",
                    (utc_now(), job_id),
                )
                return state, self._add_event(db, job_id, "state", {"state": "cancelled"})
            if state == "running":
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        return state, None

    def pending(self) -> tuple[list[JobInfo], set[str]]:
        """What a runner shared with other processes looks at: the queued jobs (oldest first)
        and the ids of running jobs whose cancel was asked for."""
        queued = self.in_state("queued")
        with self._lock:
            cancels = {
                str(r[0])
                for r in self._db.execute(
                    "SELECT id FROM jobs WHERE state = 'running' AND cancel_requested = 1"
                )
            }
        return queued, cancels

    def set_progress(self, job_id: str, progress: JobProgress) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET progress = ? WHERE id = ?", (progress.model_dump_json(), job_id)
            )

    # --- chunks -----------------------------------------------------------------------------

    def commit_chunk(
        self,
        job_id: str,
        start: int,
        stop: int,
        *,
        part: str | None,
        failed: Sequence[tuple[int, int, str]] = (),
        progress: JobProgress | None = None,
    ) -> None:
        """Record that rows ``start:stop`` are done, in one transaction: their results are in
        ``part`` (a file already renamed into place), except the ``failed`` ranges."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO chunks (job_id, start, stop, state, part) "
                "VALUES (?, ?, ?, 'done', ?)",
                (job_id, start, stop, part),
            )
            db.executemany(
                "INSERT OR REPLACE INTO chunks (job_id, start, stop, state, error) "
                "VALUES (?, ?, ?, 'failed', ?)",
                [(job_id, s, e, m) for s, e, m in failed],
            )
            if progress is not None:
                db.execute(
                    "UPDATE jobs SET progress = ? WHERE id = ?",
                    (progress.model_dump_json(), job_id),
                )

    def chunks(self, job_id: str) -> list[Chunk]:
        """The committed chunks of a job, in row order (done ones, then failed ranges)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT start, stop, state, error, part FROM chunks WHERE job_id = ? "
                "ORDER BY start, state",
                (job_id,),
            ).fetchall()
        return [Chunk(*row) for row in rows]

    def clear_chunks(self, job_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM chunks WHERE job_id = ?", (job_id,))

    # --- events -----------------------------------------------------------------------------

    def add_event(self, job_id: str, type_: str, data: Mapping[str, Any]) -> JobEvent:
        """Append an event (numbered after the job's last one) and return it."""
        with self._transaction() as db:
            return self._add_event(db, job_id, type_, data)

    @staticmethod
    def _add_event(
        db: sqlite3.Connection, job_id: str, type_: str, data: Mapping[str, Any]
    ) -> JobEvent:
        (last,) = db.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?", (job_id,)
        ).fetchone()
        event = JobEvent(seq=last + 1, time=utc_now(), type=type_, data=dict(data))
        db.execute(
            "INSERT INTO events (job_id, seq, time, type, data) VALUES (?, ?, ?, ?, ?)",
            (job_id, event.seq, event.time, type_, orjson.dumps(event.data).decode()),
        )
        return event

    def events(self, job_id: str, after: int = 0) -> list[JobEvent]:
        """The events of a job numbered after ``after``, in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, time, type, data FROM events WHERE job_id = ? AND seq > ? "
                "ORDER BY seq",
                (job_id, after),
            ).fetchall()
        return [JobEvent(seq=s, time=t, type=k, data=orjson.loads(d)) for s, t, k, d in rows]
