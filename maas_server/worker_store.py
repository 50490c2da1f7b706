"""What the worker processes of ``maas serve --workers N`` share: one SQLite database (WAL) in
the supervisor's runtime folder, made fresh at every start.

- ``changes``: the log of the control plane. Every load, unload or publication made through the
  API on one worker is appended with the next *generation*; every worker applies the log in
  order (:mod:`maas_server.worker_sync`).
- ``workers``: the workers serving now, and the last generation each has applied (its
  acknowledgement). A worker appears only once it has applied the whole log; the supervisor
  removes a worker that died.
- ``snapshots`` and ``counters``: the statistics of each worker, written when another worker
  asks for them (``wanted``), so that ``/metrics`` and the statistics extension add up every
  worker's counters; the snapshot of a dead worker stays, marked dead, so that counters do not
  go back (Prometheus multiprocess mode keeps a dead process's counters too).

Every method is short and takes one lock: call them from worker threads, not the event loop
(a write may wait for another process's).

>>> store = WorkerStore(folder)  # doctest: +SKIP
>>> generation = store.append(Change("unload", "mlp"), worker=0)  # doctest: +SKIP
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["STORE_FILE", "Change", "ChangeOp", "Snapshot", "WorkerRow", "WorkerStore"]

STORE_FILE = "workers.sqlite"

ChangeOp = Literal["load", "unload", "follow"]
"""``load``: load the model (with ``config`` as the override); ``unload``; ``follow``: make the
model what its folder and the model index say now (after a publication, a deletion or a new
default version)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS changes (
    generation INTEGER PRIMARY KEY AUTOINCREMENT,
    worker INTEGER NOT NULL,
    op TEXT NOT NULL,
    model TEXT NOT NULL,
    config TEXT
);
CREATE TABLE IF NOT EXISTS workers (
    worker INTEGER PRIMARY KEY,
    pid INTEGER NOT NULL,
    applied INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    pid INTEGER PRIMARY KEY,
    worker INTEGER NOT NULL,
    alive INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class Change:
    """One change of the control plane (``generation`` and ``worker`` once logged)."""

    op: ChangeOp
    model: str
    config: str | None = None
    generation: int = 0
    worker: int = -1


@dataclass(frozen=True)
class WorkerRow:
    """A serving worker: its index, process id and the last generation it applied."""

    worker: int
    pid: int
    applied: int


@dataclass(frozen=True)
class Snapshot:
    """The statistics one worker process wrote (``data``: JSON), answering request ``seq``."""

    pid: int
    worker: int
    alive: bool
    seq: int
    data: str


class WorkerStore:
    """The shared database of one ``maas serve --workers N`` (see the module)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / STORE_FILE
        self._lock = threading.Lock()
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        self._db = db

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> None:
        with self._lock:
            self._db.execute(sql, args)

    # --- the log of changes -----------------------------------------------------------------

    def append(self, change: Change, worker: int) -> int:
        """Log ``change`` made by ``worker``; its generation."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO changes (worker, op, model, config) VALUES (?, ?, ?, ?)",
                (worker, change.op, change.model, change.config),
            )
            generation = cursor.lastrowid
        assert generation is not None
        return generation

    def changes_after(self, generation: int) -> list[Change]:
        rows = self._all(
            "SELECT generation, worker, op, model, config FROM changes WHERE generation > ? "
            "ORDER BY generation",
            (generation,),
        )
        return [Change(r[2], r[3], r[4], r[0], r[1]) for r in rows]

    def latest(self) -> int:
        """The generation of the last change logged (0: none)."""
        rows = self._all("SELECT COALESCE(MAX(generation), 0) FROM changes")
        return int(rows[0][0])

    # --- serving workers --------------------------------------------------------------------

    def register(self, worker: int, pid: int, applied: int) -> bool:
        """Add ``worker`` as serving, in one transaction with a look at the log: False (nothing
        written) when changes after ``applied`` came meanwhile, to apply first."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                latest = db.execute("SELECT COALESCE(MAX(generation), 0) FROM changes")
                if int(latest.fetchone()[0]) != applied:
                    db.execute("ROLLBACK")
                    return False
                db.execute(
                    "INSERT OR REPLACE INTO workers (worker, pid, applied) VALUES (?, ?, ?)",
                    (worker, pid, applied),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return True

    def acknowledge(self, pid: int, applied: int) -> None:
        """The worker ``pid`` serves every change up to ``applied``."""
        self._run("UPDATE workers SET applied = MAX(applied, ?) WHERE pid = ?", (applied, pid))

    def serving(self) -> list[WorkerRow]:
        rows = self._all("SELECT worker, pid, applied FROM workers ORDER BY worker")
        return [WorkerRow(int(r[0]), int(r[1]), int(r[2])) for r in rows]

    def leave(self, pid: int) -> None:
        """The worker ``pid`` stops serving (it drains, or it died): nobody waits for it."""
        self._run("DELETE FROM workers WHERE pid = ?", (pid,))

    def process_dead(self, pid: int) -> None:
        """The worker ``pid`` is gone: it no longer serves, its snapshot's gauges no longer
        count (its counters still do)."""
        with self._lock:
            self._db.execute("DELETE FROM workers WHERE pid = ?", (pid,))
            self._db.execute("UPDATE snapshots SET alive = 0 WHERE pid = ?", (pid,))

    # --- statistics -------------------------------------------------------------------------

    def want_snapshots(self) -> int:
        """Ask every worker for fresh statistics; the number their snapshots must reach."""
        with self._lock:
            self._db.execute(
                "INSERT INTO counters (name, value) VALUES ('wanted', 1) "
                "ON CONFLICT (name) DO UPDATE SET value = value + 1"
            )
            row = self._db.execute("SELECT value FROM counters WHERE name = 'wanted'").fetchone()
        return int(row[0])

    def poll(self) -> tuple[int, int]:
        """What a worker looks at every tick: the last generation logged and the last snapshot
        asked for."""
        rows = self._all(
            "SELECT (SELECT COALESCE(MAX(generation), 0) FROM changes), "
            "(SELECT COALESCE(MAX(value), 0) FROM counters WHERE name = 'wanted')"
        )
        return int(rows[0][0]), int(rows[0][1])

    def data_version(self) -> int:
        """A number that changes whenever another connection commits (SQLite's
        ``PRAGMA data_version``): a cheap look before the real one."""
        rows = self._all("PRAGMA data_version")
        return int(rows[0][0])

    def put_snapshot(self, worker: int, pid: int, seq: int, data: str) -> None:
        self._run(
            "INSERT OR REPLACE INTO snapshots (pid, worker, alive, seq, data) "
            "VALUES (?, ?, 1, ?, ?)",
            (pid, worker, seq, data),
        )

    def snapshots(self) -> list[Snapshot]:
        rows = self._all("SELECT pid, worker, alive, seq, data FROM snapshots ORDER BY pid")
        return [Snapshot(int(r[0]), int(r[1]), bool(r[2]), int(r[3]), str(r[4])) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
