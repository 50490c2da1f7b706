"""The job store and the dataset store opened twice on one folder, as the workers of
``maas serve --workers N`` open them: what one does, the other sees, and neither undoes the
other's work."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from maas_server.datasets import DatasetStore
from maas_server.job_store import JOBS_FILE, JobStore


def test_a_cancel_asked_through_another_store_reaches_the_runner(tmp_path: Path) -> None:
    runner, other = JobStore(tmp_path), JobStore(tmp_path)
    try:
        queued, _ = other.create("batch", {"n": 1}, owner=None)
        running, _ = other.create("batch", {"n": 2}, owner=None)
        found, cancels = runner.pending()
        assert [j.id for j in found] == [queued.id, running.id] and cancels == set()
        assert runner.claim(running.id) is False  # taken, no cancel asked

        # a queued job is cancelled at once, with its event in the same transaction
        state, event = other.request_cancel(queued.id)
        assert state == "queued" and event is not None and event.data == {"state": "cancelled"}
        assert runner.claim(queued.id) is None  # the runner does not run it
        assert runner.get(queued.id).state == "cancelled"  # type: ignore[union-attr]
        # a running one gets the flag, which the runner's look finds
        assert other.request_cancel(running.id) == ("running", None)
        assert runner.pending() == ([], {running.id})
        runner.set_state(running.id, "cancelled", finished=True, event={"state": "cancelled"})
        assert other.request_cancel(running.id) == ("cancelled", None)
        assert runner.pending() == ([], set())
        assert [e.seq for e in other.events(running.id)] == [1]
    finally:
        runner.close()
        other.close()


def test_a_job_is_claimed_once(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    try:
        job, _ = store.create("batch", {}, owner=None)
        assert store.claim(job.id) is False
        assert store.claim(job.id) is None  # already running: only a resume takes it again
        assert store.claim(job.id, resume=True) is False
    finally:
        store.close()


def test_a_job_store_made_before_the_cancel_flag_gets_it(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / JOBS_FILE)
    db.execute(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, type TEXT NOT NULL, state TEXT NOT NULL, "
        "owner TEXT, created TEXT NOT NULL, started TEXT, finished TEXT, spec TEXT NOT NULL, "
        "progress TEXT NOT NULL, result TEXT, error TEXT, idempotency_key TEXT, "
        "idempotency_owner TEXT, request_digest TEXT)"
    )
    db.execute(
        "INSERT INTO jobs (id, type, state, created, spec, progress) "
        "VALUES ('old', 'batch', 'running', '2026-01-01T00:00:00.000Z', '{}', '{}')"
    )
    db.commit()
    db.close()
    store = JobStore(tmp_path)
    try:
        assert store.request_cancel("old") == ("running", None)
        assert store.pending() == ([], {"old"})
    finally:
        store.close()


def test_a_second_dataset_store_leaves_the_first_ones_upload_alone(tmp_path: Path) -> None:
    first = DatasetStore(tmp_path)
    try:
        staged = first._stage()  # an upload in progress in another process
        (staged / "upload.bin").write_bytes(b"...")
        second = DatasetStore(tmp_path)  # a worker opening the folder: no clean-up
        second.close()
        assert (staged / "upload.bin").exists()
        info = first.create_from_columns("made", {"x": np.arange(3)}, owner=None, format="npz")
        assert info.rows == 3
    finally:
        first.close()
    alone = DatasetStore(tmp_path)  # the next store alone on the folder cleans up
    try:
        assert not staged.exists()
        assert alone.get("made").rows == 3
    finally:
        alone.close()
