"""One control plane over the worker processes of ``maas serve --workers N``.

Each worker loads the repository on its own. A change made through the API (load, unload,
publish, delete, default version) is made by the worker that received it, then appended to the
shared log (:class:`~maas_server.worker_store.WorkerStore`) under the next *generation*; a
thread of every worker looks for a commit every :data:`TICK_S` (``PRAGMA data_version``, one
cheap query) and, when there is one, another applies what is new in the log, in order, then
acknowledges the generation it reached. The API call answers once every serving worker has
acknowledged its generation (:meth:`WorkerSync.changed`), or 504 after
``WorkerSettings.sync_timeout_s``: the change is then made where it was received and the late
workers apply it when they can.

- A worker starting (or a replacement of one that died) first loads the repository as the
  server's ``--model-control`` says, then applies the whole log, and only then joins the workers
  that are waited for (in one transaction with a look at the log, so that no change is missed).
- Changes of one model made at once through two workers end, on every worker, in the log's
  order: a worker that applied a change of the same model after it began its own re-applies its
  own after logging it (:meth:`WorkerSync.mark` tells when it began).
- A worker leaves the waited-for set when it begins to drain, and the supervisor removes one
  that died.

Another thread answers the requests for statistics: see :mod:`maas_server.worker_stats`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from .errors import ServerError
from .repository import ModelRepository
from .settings import WorkerSettings
from .stats import Rejections
from .worker_store import Change, WorkerRow, WorkerStore

__all__ = ["TICK_S", "WorkerSync", "WorkerSyncError", "pid_alive"]

logger = logging.getLogger("maas_server")

TICK_S = 0.02
"""How often a worker looks at the shared log and at the requests for statistics."""


class WorkerSyncError(ServerError):
    """A change was made on the worker that received it, but not every worker applied it in
    time."""

    status_code = 504


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (a worker the supervisor has not reaped yet counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerSync:
    """This worker's side of the control plane (see the module)."""

    def __init__(
        self,
        worker: WorkerSettings,
        repository: ModelRepository,
        rejections: Rejections,
        *,
        pid: int | None = None,
    ) -> None:
        self.worker = worker
        self.repository = repository
        self.rejections = rejections
        self.store = WorkerStore(Path(worker.folder))
        self.pid = pid if pid is not None else os.getpid()
        """The process id this worker is known by (tests run two in one process)."""
        self.applied = 0
        """The last generation of the log this worker serves."""
        self.snapshot_seq = 0
        """The last request for statistics this worker answered."""
        self.serving: list[WorkerRow] = []
        """The serving workers, as this one saw them at its last look."""
        self._lock = threading.Lock()  # one change at a time in this process
        self._touched: dict[str, int] = {}  # model -> generation of its last change applied
        self._stop = threading.Event()
        self._follow_due = threading.Event()
        self._answer_due = threading.Event()
        self._threads: list[threading.Thread] = []
        self._joined = False

    # --- start and stop ---------------------------------------------------------------------

    def start(self) -> None:
        """Apply the whole log, join the serving workers, start the thread (blocking: call it
        off the event loop, once the start-up loads are done)."""
        while True:
            with self._lock:
                self._catch_up()
                if self.store.register(self.worker.index, self.pid, self.applied):
                    break
        self._joined = True
        self.serving = self.store.serving()
        logger.info(
            "worker %d (pid %d) serving, at generation %d of the control plane",
            self.worker.index,
            self.pid,
            self.applied,
        )
        # statistics are answered on a thread of their own, even while a long load is applied
        for target, name in (
            (self._watch, "maas-worker-watch"),
            (self._follow, "maas-worker-sync"),
            (self._answer, "maas-worker-stats"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def leave(self) -> None:
        """Stop being waited for (the worker drains)."""
        if self._joined:
            self._joined = False
            try:
                self.store.leave(self.pid)
            except Exception:
                logger.exception("worker %d: leaving the control plane failed", self.worker.index)

    def stop(self) -> None:
        self.leave()
        self.stop_threads()
        self.store.close()

    def stop_threads(self) -> None:
        """Stop looking at the shared state (the worker stays registered, if it was)."""
        self._stop.set()
        self._follow_due.set()
        self._answer_due.set()
        for thread in self._threads:
            thread.join(timeout=10)

    # --- changes made here ------------------------------------------------------------------

    def mark(self) -> int:
        """Call before making a change here; give the value to :meth:`changed`."""
        return self.applied

    async def changed(self, change: Change, since: int) -> None:
        """Log ``change``, made here since :meth:`mark` returned ``since``, and wait until every
        serving worker serves it; :class:`WorkerSyncError` (504) after the sync timeout."""
        generation = await asyncio.to_thread(self._log, change, since)
        await self._wait(generation)

    def _log(self, change: Change, since: int) -> int:
        with self._lock:
            generation = self.store.append(change, self.worker.index)
            self._catch_up(upto=generation - 1)
            if self._touched.get(change.model, 0) > since:
                # another change of this model was applied here after ours began, and the log
                # puts ours last: make ours again so that this worker ends as the others do
                self._apply(change)
            self._touched[change.model] = generation
            self.applied = generation
            self.store.acknowledge(self.pid, generation)
        return generation

    async def _wait(self, generation: int) -> None:
        deadline = time.monotonic() + self.worker.sync_timeout_s
        while True:
            rows = await asyncio.to_thread(self.store.serving)
            behind = [
                r for r in rows if r.applied < generation and r.pid != self.pid and pid_alive(r.pid)
            ]
            if not behind:
                return
            if time.monotonic() > deadline:
                late = ", ".join(f"{r.worker} (pid {r.pid})" for r in behind)
                raise WorkerSyncError(
                    f"the change is made on worker {self.worker.index}, but worker(s) {late} did "
                    f"not apply it within {self.worker.sync_timeout_s:g} s; they will serve it "
                    "once they do (the server log says why they are late)"
                )
            await asyncio.sleep(TICK_S / 2)

    # --- changes made elsewhere -------------------------------------------------------------

    def _catch_up(self, upto: int | None = None) -> None:
        """Apply the logged changes after :attr:`applied` (up to ``upto``); hold the lock."""
        done = False
        for change in self.store.changes_after(self.applied):
            if upto is not None and change.generation > upto:
                break
            self._apply(change)
            self._touched[change.model] = change.generation
            self.applied = change.generation
            done = True
        if done and self._joined:
            self.store.acknowledge(self.pid, self.applied)

    def _apply(self, change: Change) -> None:
        try:
            if change.op == "load":
                self.repository.load(change.model, change.config)
            elif change.op == "unload":
                self.repository.unload(change.model)
            else:
                self.repository.follow(change.model)
        except ServerError as exc:  # e.g. the model's folder went meanwhile
            logger.warning(
                "worker %d: change %d (%s %s) not applied: %s",
                self.worker.index,
                change.generation,
                change.op,
                change.model,
                exc,
            )
        except Exception:
            logger.exception(
                "worker %d: change %d (%s %s) failed",
                self.worker.index,
                change.generation,
                change.op,
                change.model,
            )

    def _watch(self) -> None:
        """Every :data:`TICK_S`: one cheap look for a commit by another process, which wakes
        the thread that follows the log and the one that answers requests for statistics."""
        seen = None
        while not self._stop.wait(TICK_S):
            try:
                version = self.store.data_version()
            except Exception:
                logger.exception("worker %d: looking at the shared state", self.worker.index)
                continue
            if version != seen:
                seen = version
                self._follow_due.set()
                self._answer_due.set()

    def _follow(self) -> None:
        while self._follow_due.wait() and not self._stop.is_set():
            self._follow_due.clear()
            try:
                latest, _wanted = self.store.poll()
                self.serving = self.store.serving()
                if latest > self.applied:
                    with self._lock:
                        self._catch_up()
            except Exception:
                logger.exception("worker %d: following the control plane", self.worker.index)
                if not self._stop.wait(TICK_S * 10):
                    self._follow_due.set()  # look again, without waiting for another commit

    def _answer(self) -> None:
        while self._answer_due.wait() and not self._stop.is_set():
            self._answer_due.clear()
            try:
                _latest, wanted = self.store.poll()
                if wanted > self.snapshot_seq:
                    self.store.put_snapshot(
                        self.worker.index, self.pid, wanted, self.snapshot_json()
                    )
                    self.snapshot_seq = wanted
            except Exception:
                logger.exception("worker %d: writing its statistics", self.worker.index)
                if not self._stop.wait(TICK_S * 10):
                    self._answer_due.set()

    def describe(self) -> dict[str, Any]:
        """This worker and the serving ones, for the server metadata (``GET /v2``)."""
        return {
            "index": self.worker.index,
            "count": self.worker.count,
            "pid": self.pid,
            "generation": self.applied,
            "serving": [
                {"index": r.worker, "pid": r.pid, "generation": r.applied} for r in self.serving
            ],
        }

    def snapshot_json(self) -> str:
        """This worker's statistics: each loaded version's counters and the refusals."""
        models = [
            {"name": name, "version": version, "stats": stats.snapshot()}
            for name, version, stats in self.repository.version_stats()
        ]
        return json.dumps({"models": models, "rejections": self.rejections.snapshot()})
