"""A maas server as a real subprocess, for the tests that SIGKILL it mid-work and start it
again on the same folders, and a poll on its own state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port
from tests.waiting import DEADLINE_S

ROOT = Path(__file__).resolve().parents[2]


def poll(check: Callable[[], Any], what: str, timeout: float = 2 * DEADLINE_S) -> Any:
    """``check()`` until it returns something true (or raise); on the server's own state. A
    server not answering yet (a transport error) counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except httpx.TransportError:
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in time")
        time.sleep(0.01)


class ServedProcess:
    """A server started with ``python -m`` and the arguments :meth:`command` gives for its
    port, ready when ``/v2/health/ready`` says so; killed (SIGKILL) or stopped (SIGTERM)."""

    def __init__(self, log: Path, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", *self.command(self.port)],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        poll(self.ready, f"server on {self.url} ready")

    def command(self, port: int) -> Sequence[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the server exited with {self.process.returncode}")
        return httpx.get(f"{self.url}/v2/health/ready").status_code == 200

    def job(self, job_id: str) -> dict[str, Any]:
        answer = httpx.get(f"{self.url}/v2/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        info: dict[str, Any] = answer.json()
        return info

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self.log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.log.close()
