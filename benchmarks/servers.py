"""Servers under test as subprocesses on free loopback ports, and the CPU time they use.

Example::

    with serve("maas", maas_command(repo, port), port, log) as server:
        print(server.base_url, cpu_seconds(server.process.pid))
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = [
    "ROOT",
    "ServerProcess",
    "bare_command",
    "cpu_seconds",
    "free_port",
    "maas_command",
    "serve",
]

ROOT = Path(__file__).resolve().parent.parent
"""The repository root (the working directory of every server started here)."""


@dataclass
class ServerProcess:
    """A running server: its name, base URL and process."""

    name: str
    base_url: str
    process: subprocess.Popen[bytes]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None where it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def maas_command(repository: Path, port: int, log_level: str = "warning") -> list[str]:
    """``maas serve`` for a repository, run by this Python (no console script needed)."""
    return [
        sys.executable,
        "-c",
        "from maas_cli import main; main()",
        "serve",
        str(repository),
        "--port",
        str(port),
        "--log-level",
        log_level,
    ]


def bare_command(model: Path, port: int) -> list[str]:
    """``benchmarks/bare_starlette.py`` for one model file."""
    return [
        sys.executable,
        str(ROOT / "benchmarks" / "bare_starlette.py"),
        str(model),
        "--port",
        str(port),
    ]


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def serve(
    name: str,
    command: Sequence[str],
    port: int,
    log: Path,
    *,
    ready_path: str = "/v2/health/ready",
    timeout: float = 120.0,
) -> Iterator[ServerProcess]:
    """Start a server subprocess (output to ``log``), wait until ``ready_path`` answers 200,
    and stop it on the way out. Fails with the log's tail when it exits or is not ready in time."""
    with log.open("wb") as out:
        process = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=2) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{_tail(log)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready after {timeout:g} s:\n{_tail(log)}")
                try:
                    if client.get(base_url + ready_path).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        yield ServerProcess(name, base_url, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
