"""kill -9 of a real ``maas serve`` in the middle of a training: the training process dies with
the server, and after a restart the job is failed with "interrupted by a server restart" and no
version was published; a job that asked for ``"on_restart": "restart"`` trains again from the
start and publishes exactly one version."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits

from maas_server.datasets import DatasetStore
from tests.server.served_process import ServedProcess
from tests.server.served_process import poll as served_poll
from tests.waiting import DEADLINE_S

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the server's children in /proc"
)


def poll(check: Callable[[], Any], what: str) -> Any:
    return served_poll(check, what, timeout=4 * DEADLINE_S)  # trainings take longer


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text()
        found.update(int(p) for p in text.split())
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


class Server(ServedProcess):
    """``maas serve`` with a data folder; trainings at nice 0 (19 crawls on a busy machine)."""

    def __init__(self, repository: Path, data_dir: Path, log: Path) -> None:
        self.arguments = [str(repository), "--data-dir", str(data_dir)]
        super().__init__(log)

    def command(self, port: int) -> list[str]:
        return [
            "maas_cli",
            "serve",
            *self.arguments,
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--training-nice",
            "0",
        ]

    def create(self, **spec: Any) -> str:
        answer = httpx.post(f"{self.url}/v2/jobs", json={"type": "training", **spec})
        assert answer.status_code == 201, answer.text
        job_id: str = answer.json()["id"]
        return job_id


def test_kill_9_mid_training_fails_it_cleanly_or_restarts_it(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    repository.mkdir()
    data_dir = tmp_path / "data"
    digits = load_digits()
    store = DatasetStore(data_dir)
    columns = {"image": digits.images.astype(np.float32), "digit": digits.target}
    store.create_from_columns("digits", columns, owner=None, format="npz")
    store.close()
    log = tmp_path / "server.log"

    first = Server(repository, data_dir, log)
    try:
        # one row per step: slow epochs, so the kill lands in the middle of the training
        interrupted = first.create(
            dataset="digits",
            target="digit",
            name="interrupted",
            batch_size=1,
            epochs=1000,
            early_stopping=False,
        )
        # waits for the one training slot, "running" as a job: restarted after the crash
        restarted = first.create(
            dataset="digits", target="digit", name="restarted", epochs=3, on_restart="restart"
        )
        poll(lambda: first.job(interrupted)["progress"]["done"] >= 1, "a first epoch")
        training = poll(lambda: children(first.process.pid), "the training process")
        assert first.job(restarted)["state"] == "running"
    except BaseException:
        first.stop()
        raise
    first.kill()
    for pid in training:  # the training dies with the server, it does not train on alone
        poll(lambda pid=pid: not alive(pid), f"training process {pid} ended")

    second = Server(repository, data_dir, log)
    try:
        failed = poll(
            lambda: (info := second.job(interrupted))["state"] != "running" and info,
            "the interrupted job over",
        )
        assert failed["state"] == "failed"
        assert failed["error"] == "interrupted by a server restart"
        answer = httpx.get(f"{second.url}/v2/repository/models/interrupted/versions")
        assert answer.status_code == 404, answer.text
        assert not (repository / "interrupted").exists()

        done = poll(
            lambda: (info := second.job(restarted))["state"] in ("succeeded", "failed") and info,
            "the restarted job over",
        )
        assert done["state"] == "succeeded", done["error"]
        versions = httpx.get(f"{second.url}/v2/repository/models/restarted/versions").json()
        assert [v["version"] for v in versions["versions"]] == ["1"]
    finally:
        second.stop()
