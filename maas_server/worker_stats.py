"""The statistics of the whole server when ``maas serve --workers N`` runs N processes.

Each worker counts its own requests (:class:`~maas_server.stats.ModelStats`). A worker asked for
``/metrics`` or the statistics extension asks every other serving worker for a snapshot of its
counters (through the shared :class:`~maas_server.worker_store.WorkerStore`), waits until each
has written one taken after the question (at most :data:`GATHER_TIMEOUT_S`; a worker too busy to
answer in time is counted with its previous snapshot), and adds them to its own. So the answer
counts every request answered before it was asked, on any worker. The counters of a worker that
died stay in the sums (as Prometheus multiprocess mode keeps them), for the versions still
loaded; its ``pending`` gauge no longer counts.

Reading blocks while it waits: call it off the event loop.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .repository import ModelRepository
from .stats import ModelStats, Rejections
from .worker_store import Snapshot
from .worker_sync import TICK_S, WorkerSync

__all__ = ["GATHER_TIMEOUT_S", "WorkerStats"]

GATHER_TIMEOUT_S = 2.0
"""How long a reading waits for the other workers' snapshots."""


class WorkerStats:
    """Statistics summed over the workers: a :class:`~maas_server.stats.StatsSource` for the
    statistics extension and a :class:`~maas_server.stats.ServerStats` for ``/metrics``."""

    def __init__(
        self, sync: WorkerSync, repository: ModelRepository, rejections: Rejections
    ) -> None:
        self.sync = sync
        self.repository = repository
        self.rejections = rejections

    def _others(self) -> list[tuple[Snapshot, dict[str, Any]]]:
        store = self.sync.store
        me = self.sync.pid
        seq = store.want_snapshots()
        deadline = time.monotonic() + GATHER_TIMEOUT_S
        while True:
            waited = {row.pid for row in store.serving() if row.pid != me}
            snapshots = store.snapshots()
            fresh = {s.pid for s in snapshots if s.seq >= seq}
            if waited <= fresh or time.monotonic() > deadline:
                break
            time.sleep(TICK_S / 4)
        return [(s, json.loads(s.data)) for s in snapshots if s.pid != me]

    def _merge(
        self,
        local: list[tuple[str, int, ModelStats]],
        others: list[tuple[Snapshot, dict[str, Any]]],
    ) -> list[tuple[str, int, ModelStats]]:
        merged: dict[tuple[str, int], ModelStats] = {}
        for name, version, stats in local:
            total = ModelStats()
            total.absorb(stats.snapshot())
            merged[(name, version)] = total
        for snapshot, data in others:
            for entry in data["models"]:
                found = merged.get((entry["name"], int(entry["version"])))
                if found is not None:
                    found.absorb(entry["stats"], alive=snapshot.alive)
        return [(name, version, merged[(name, version)]) for name, version, _ in local]

    def version_stats(
        self, name: str | None = None, version: str | None = None
    ) -> list[tuple[str, int, ModelStats]]:
        """As :meth:`ModelRepository.version_stats` (404 for an unknown model), summed."""
        local = self.repository.version_stats(name, version)
        return self._merge(local, self._others())

    def read(self) -> tuple[list[tuple[str, int, ModelStats]], dict[str, int]]:
        others = self._others()
        models = self._merge(self.repository.version_stats(), others)
        refusals = dict(self.rejections.snapshot())
        for _snapshot, data in others:
            for reason, count in data["rejections"].items():
                refusals[reason] = refusals.get(reason, 0) + int(count)
        return models, refusals
