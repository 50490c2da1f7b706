"""Datasets survive kill -9: a real ``maas serve`` process is SIGKILLed in the middle of an
upload; restarted on the same data folder, it lists the dataset stored before with the same
sha256 and bytes, and nothing of the interrupted upload."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import free_port, wait_for

CSV = b"x,y\n" + b"".join(b"%d.5,%d\n" % (i, i) for i in range(10_000))


@contextmanager
def _serve(repository: Path, data: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    command = [
        sys.executable, "-c", "from maas_cli import main; main()", "serve", str(repository),
        "--port", str(port), "--log-level", "warning", "--model-control", "explicit",
        "--data-dir", str(data),
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/v2/health/live").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            assert time.monotonic() < deadline, "maas serve did not start"
            time.sleep(0.05)
        yield base, server
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        if server.stderr is not None:
            server.stderr.close()


def _staged_bytes(data: Path) -> int:
    staging = data / "datasets" / ".staging"
    return sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())


def test_the_catalog_survives_kill_9_and_an_interrupted_upload_leaves_nothing(
    tmp_path: Path,
) -> None:
    repository = tmp_path / "models"
    repository.mkdir()
    data = tmp_path / "data"
    with _serve(repository, data) as (base, server):
        made = httpx.post(f"{base}/v2/datasets/kept", content=CSV, params={"format": "csv"})
        assert made.status_code == 201, made.text
        info = made.json()
        assert info["sha256"] == hashlib.sha256(CSV).hexdigest()
        # A second upload that stops part way: 2 MiB of a declared 16 MiB arrive, then the
        # server is killed while it waits for the rest.
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                b"POST /v2/datasets/partial?format=csv HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Length: 16777216\r\n\r\n" + b"a,b\n" + b"1,2\n" * (512 * 1024)
            )
            wait_for(lambda: _staged_bytes(data) >= 1024 * 1024, timeout=30)
            os.kill(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    assert _staged_bytes(data) > 0  # the kill left a partial upload behind
    with _serve(repository, data) as (base, _):
        listed = httpx.get(f"{base}/v2/datasets").json()["datasets"]
        assert [(d["name"], d["version"], d["sha256"]) for d in listed] == [
            ("kept", 1, info["sha256"])
        ]
        assert listed[0] == info
        assert httpx.get(f"{base}/v2/datasets/kept/data").content == CSV
        assert httpx.get(f"{base}/v2/datasets/partial").status_code == 404
        assert not (data / "datasets" / ".staging").exists()
        assert sorted(p.name for p in (data / "datasets").iterdir()) == ["kept"]
        again = httpx.post(f"{base}/v2/datasets/kept", content=CSV, params={"format": "csv"})
        assert again.json()["version"] == 2
