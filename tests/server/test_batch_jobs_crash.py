"""THE crash test of batch jobs: ``kill -9`` the server in the middle of a job, start it again on
the same folders, and the job finishes with every row's result exactly once and right."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from maas_client import Client
from maas_client.types import JobEvent
from maas_server.datasets import DatasetStore
from tests import models
from tests.server.served_process import ServedProcess, poll
from tests.waiting import DEADLINE_S

ROWS = 2000


class ServerProcess(ServedProcess):
    """``tests.server.job_server``: maas with a gate that can hold the model's runs."""

    def __init__(
        self, repository: Path, data_dir: Path, log: Path, *extra: str, port: int | None = None
    ) -> None:
        self.arguments = [str(repository), str(data_dir), *extra]
        super().__init__(log, port=port)

    def command(self, port: int) -> list[str]:
        return ["tests.server.job_server", *self.arguments[:2], str(port), *self.arguments[2:]]


@pytest.fixture
def folders(tmp_path: Path) -> Iterator[tuple[Path, Path, np.ndarray]]:
    repository = tmp_path / "models"
    models.save(models.mlp_model(), repository / "mlp" / "1" / "model.onnx")
    (repository / "mlp" / "config.json").write_text('{"max_batch_size": 64}')
    data_dir = tmp_path / "data"
    rows = np.random.default_rng(7).standard_normal((ROWS, 64)).astype(np.float32)
    np.save(tmp_path / "rows.npy", rows)
    store = DatasetStore(data_dir)
    store.create_from_file("rows", tmp_path / "rows.npy", "npy", owner=None)
    store.close()
    yield repository, data_dir, rows


def test_kill_9_in_the_middle_of_a_job_then_restart_every_row_exactly_once(
    folders: tuple[Path, Path, np.ndarray], tmp_path: Path
) -> None:
    repository, data_dir, rows = folders
    log = tmp_path / "server.log"
    # 12 model runs, then every run is held: the job cannot finish before the kill
    first = ServerProcess(repository, data_dir, log, "--hold-after", "12")
    follower: threading.Thread | None = None
    followed: list[JobEvent] = []
    try:
        body = {
            "type": "batch",
            "model": "mlp",
            "dataset": "rows",
            "batch_size": 8,
            "chunk_rows": 16,
        }
        answer = httpx.post(f"{first.url}/v2/jobs", json=body)
        assert answer.status_code == 201, answer.text
        job_id = answer.json()["id"]
        mid = poll(
            lambda: (info := first.job(job_id))["progress"]["done"] > 0 and info,
            "rows done > 0",
        )
        assert mid["state"] == "running" and 0 < mid["progress"]["done"] < ROWS

        def follow() -> None:  # across the kill: the client reconnects with Last-Event-ID
            with Client(first.url, max_retries=5) as client:
                followed.extend(client.jobs.get(job_id).events())

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        poll(lambda: len(followed) >= 3, "the follower has events")
    finally:
        first.kill()

    second = ServerProcess(repository, data_dir, log, port=first.port)
    try:
        done = poll(
            lambda: (info := second.job(job_id))["state"] in ("succeeded", "failed") and info,
            "job over after the restart",
        )
        assert done["state"] == "succeeded", done["error"]
        assert done["progress"]["done"] == ROWS and not done["chunk_errors"]
        events = httpx.get(f"{second.url}/v2/jobs/{job_id}/events").text
        assert "interrupted by a server restart: resume" in events
        follower.join(2 * DEADLINE_S)
        assert not follower.is_alive()
    finally:
        second.stop()
    seqs = [e.seq for e in followed]
    assert seqs == list(range(1, len(seqs) + 1))  # none lost, none twice, across the restart
    assert followed[-1].type == "state" and followed[-1].data["state"] == "succeeded"

    store = DatasetStore(data_dir)
    try:
        result = done["result"]
        with store.open(result["dataset"], result["version"]) as opened:
            columns = opened.read(0, opened.num_rows())
    finally:
        store.close()
    assert columns["row"].tolist() == list(range(ROWS))  # each row once, in order
    session = ort.InferenceSession(
        str(repository / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (expected,) = session.run(["output"], {"input": rows})
    np.testing.assert_allclose(columns["output"], expected, rtol=1e-5, atol=1e-5)
