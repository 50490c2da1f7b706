"""The control plane and the summed statistics of ``--workers``, with two workers in this
process: two :class:`ModelRepository` objects over one folder, each with its
:class:`WorkerSync` over one shared :class:`WorkerStore` (their threads run for real). The
process-level behaviour (one socket, replacement, shutdown) is in ``test_workers.py``."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from maas_server.errors import ServerError
from maas_server.repository import ModelRepository
from maas_server.settings import WorkerSettings
from maas_server.stats import Rejections
from maas_server.worker_stats import WorkerStats
from maas_server.worker_store import Change, WorkerStore
from maas_server.worker_sync import WorkerSync, WorkerSyncError
from tests import models
from tests.conftest import _put, wait_for


class Pair:
    def __init__(self, repository: Path, shared: Path, timeout: float) -> None:
        self.repos = [ModelRepository(repository), ModelRepository(repository)]
        self.rejections = [Rejections(), Rejections()]
        # two live pids: this process and its parent stand for the two workers
        pids = [os.getpid(), os.getppid()]
        self.syncs = [
            WorkerSync(
                WorkerSettings(shared, i, 2, timeout),
                self.repos[i],
                self.rejections[i],
                pid=pids[i],
            )
            for i in range(2)
        ]

    def max_batch(self, i: int) -> int:
        return self.repos[i].get("mlp").max_batch_size


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    repository = tmp_path / "repository"
    _put(repository, "mlp", models.mlp_model(), {"max_batch_size": 64})
    shared = tmp_path / "shared"
    shared.mkdir()
    found = Pair(repository, shared, timeout=1.0)
    for sync in found.syncs:
        sync.start()
    yield found
    for sync, repo in zip(found.syncs, found.repos, strict=True):
        sync.stop()
        repo.close()


def test_a_change_answers_once_the_other_worker_applied_it(pair: Pair) -> None:
    a, b = pair.syncs
    since = a.mark()
    pair.repos[0].load("mlp")
    asyncio.run(a.changed(Change("load", "mlp"), since))
    # no waiting here: the call returned only once b had applied the load
    assert pair.repos[1].record("mlp").state == "READY"
    assert b.applied == a.applied == 1
    assert {r.pid: r.applied for r in a.store.serving()} == {a.pid: 1, b.pid: 1}


def test_changes_of_one_model_through_two_workers_end_in_the_logs_order(pair: Pair) -> None:
    """a loads with max_batch_size 8 and b with 16; b's change is logged first. Every worker
    ends with a's (the log's last), though a made its own before it applied b's."""
    a, b = pair.syncs
    a_since = a.mark()
    pair.repos[0].load("mlp", '{"max_batch_size": 8}')
    b_since = b.mark()
    pair.repos[1].load("mlp", '{"max_batch_size": 16}')
    asyncio.run(b.changed(Change("load", "mlp", '{"max_batch_size": 16}'), b_since))
    assert pair.max_batch(0) == 16  # a applied b's change, after its own
    asyncio.run(a.changed(Change("load", "mlp", '{"max_batch_size": 8}'), a_since))
    assert pair.max_batch(0) == pair.max_batch(1) == 8


def test_a_worker_that_does_not_follow_makes_the_change_answer_504(pair: Pair) -> None:
    a, b = pair.syncs
    b.stop_threads()  # b stops looking at the log: it stays registered, and behind
    since = a.mark()
    pair.repos[0].load("mlp")
    with pytest.raises(WorkerSyncError) as caught:
        asyncio.run(a.changed(Change("load", "mlp"), since))
    assert caught.value.status_code == 504
    assert f"worker(s) 1 (pid {b.pid}) did not apply it within 1 s" in caught.value.message
    assert pair.repos[0].record("mlp").state == "READY"  # made where it was received


def test_a_worker_joins_only_once_it_applied_the_whole_log(tmp_path: Path) -> None:
    store = WorkerStore(tmp_path)
    store.append(Change("unload", "mlp"), worker=0)
    assert not store.register(1, os.getpid(), applied=0)  # behind: refused, nothing written
    assert store.serving() == []
    assert store.register(1, os.getpid(), applied=1)
    assert [(r.worker, r.applied) for r in store.serving()] == [(1, 1)]
    store.close()


def test_a_follow_change_serves_what_the_folder_says(pair: Pair) -> None:
    a, _b = pair.syncs
    for sync, repo in zip(pair.syncs, pair.repos, strict=True):
        since = sync.mark()
        repo.load("mlp")
        asyncio.run(sync.changed(Change("load", "mlp"), since))
    # a new version appears on disk (what a publication through worker a does) ...
    root = pair.repos[0].root
    _put(root, "mlp", models.mlp_model(seed=2), version=2)
    since = a.mark()
    pair.repos[0].follow("mlp")
    asyncio.run(a.changed(Change("follow", "mlp"), since))
    # (the default version policy serves the latest)
    assert pair.repos[1].record("mlp").ready_versions() == [2]
    assert pair.repos[0].record("mlp").ready_versions() == [2]
    # ... and a deleted model folder is dropped by every worker
    (root / "mlp").rename(root.parent / "gone")
    since = a.mark()
    pair.repos[0].follow("mlp")
    asyncio.run(a.changed(Change("follow", "mlp"), since))
    assert pair.repos[1].loaded_names() == []


def test_statistics_add_up_every_worker_and_keep_a_dead_ones_counters(pair: Pair) -> None:
    for sync, repo in zip(pair.syncs, pair.repos, strict=True):
        since = sync.mark()
        repo.load("mlp")
        asyncio.run(sync.changed(Change("load", "mlp"), since))
    a, b = pair.syncs
    stats_a = pair.repos[0].get("mlp").stats
    stats_b = pair.repos[1].get("mlp").stats
    stats_a.record_success(1, 2000, 100, 10, 1000, 10)
    for _ in range(3):
        stats_b.record_success(1, 4000, 100, 10, 3000, 10)
    stats_b.record_batch(1, 10, 3000, 10)
    stats_b.record_failure(500, "queue_full")
    stats_b.add_pending(2)
    pair.rejections[1].add("unauthenticated")
    merged = WorkerStats(a, pair.repos[0], pair.rejections[0])

    (entry,) = merged.version_stats("mlp")
    total = entry[2].as_triton("mlp", "1")
    assert total["inference_count"] == 4
    assert total["inference_stats"]["success"] == {"count": 4, "ns": 2000 + 3 * 4000}
    assert total["inference_stats"]["fail"]["count"] == 1
    assert total["batch_stats"][0]["batch_size"] == 1
    assert entry[2].pending == 2
    assert entry[2].rejected_counts() == {"queue_full": 1}
    models_read, refusals = merged.read()
    assert sum(entry[2].latency_counts()[0]) == 4
    assert refusals == {"unauthenticated": 1}
    assert [(n, v) for n, v, _ in models_read] == [("mlp", 1)]

    # b dies: its counters stay, its pending requests no longer count
    b.stop()
    a.store.process_dead(b.pid)
    (entry,) = merged.version_stats("mlp")
    assert entry[2].as_triton("mlp", "1")["inference_count"] == 4
    assert entry[2].pending == 0
    snapshot = json.loads(next(s.data for s in a.store.snapshots() if s.pid == b.pid))
    assert snapshot["models"][0]["name"] == "mlp"


def test_an_unknown_model_is_404_for_the_summed_statistics_too(pair: Pair) -> None:
    merged = WorkerStats(pair.syncs[0], pair.repos[0], pair.rejections[0])
    with pytest.raises(ServerError) as caught:
        merged.version_stats("nope")
    assert caught.value.status_code == 404


def test_the_metadata_names_the_worker_and_the_serving_ones(pair: Pair) -> None:
    a, b = pair.syncs
    wait_for(lambda: len(a.describe()["serving"]) == 2)
    described = a.describe()
    assert (described["index"], described["count"], described["pid"]) == (0, 2, a.pid)
    assert {w["pid"] for w in described["serving"]} == {a.pid, b.pid}
