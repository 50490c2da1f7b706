"""The metrics port (``--metrics-port``): no key and no TLS there, so ``maas serve`` binds it to
loopback unless ``--metrics-host`` says otherwise, and it serves a bounded number of
connections at once, each for a bounded idle time."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from maas_cli import app as cli_app
from maas_server.metrics import MetricsServer


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


@pytest.fixture
def metrics_server(request: pytest.FixtureRequest) -> Iterator[MetricsServer]:
    options: dict[str, Any] = getattr(request, "param", {})
    server = MetricsServer(CollectorRegistry(), "127.0.0.1", 0, **options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("metrics_server", [{"max_threads": 2}], indirect=True)
def test_connections_beyond_the_thread_cap_are_closed(metrics_server: MetricsServer) -> None:
    url = f"http://127.0.0.1:{metrics_server.port}/metrics"
    idle = [socket.create_connection(("127.0.0.1", metrics_server.port)) for _ in range(2)]
    try:
        wait_until(lambda: metrics_server.busy == 2)
        with pytest.raises(httpx.TransportError):
            httpx.get(url)
        assert metrics_server.busy == 2  # no third thread
        idle.pop().close()
        wait_until(lambda: metrics_server.busy == 1)
        answer = httpx.get(url)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain")
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.parametrize("metrics_server", [{"timeout_s": 0.2}], indirect=True)
def test_a_silent_connection_is_closed(metrics_server: MetricsServer) -> None:
    with socket.create_connection(("127.0.0.1", metrics_server.port)) as sock:
        sock.settimeout(10)
        assert sock.recv(1) == b""  # the server hung up, without waiting for the client
    wait_until(lambda: metrics_server.busy == 0)
    assert httpx.get(f"http://127.0.0.1:{metrics_server.port}/metrics").status_code == 200


def run_serve(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> tuple[Any, Any]:
    """``maas serve`` up to the point where uvicorn would start serving: its app and config."""
    import uvicorn

    seen: dict[str, Any] = {}

    def run(self: uvicorn.Server, sockets: Any = None) -> None:
        seen["config"] = self.config
        self.started = True  # as if it had served and stopped

    monkeypatch.setattr(uvicorn.Server, "run", run)
    result = CliRunner().invoke(cli_app, ["serve", *args, "--access-log", "off"])
    assert result.exit_code == 0, result.output
    return seen["config"].app, seen["config"]


def test_serve_binds_the_metrics_port_to_loopback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "models").mkdir()
    repository = str(tmp_path / "models")
    with caplog.at_level(logging.WARNING, logger="maas_server"):
        app, config = run_serve(
            monkeypatch, [repository, "--host", "0.0.0.0", "--metrics-port", "9100"]
        )
    assert config.host == "0.0.0.0"
    assert app.state.settings.metrics_host == "127.0.0.1"
    assert not any("metrics on" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="maas_server"):
        app, _ = run_serve(
            monkeypatch, [repository, "--metrics-port", "9100", "--metrics-host", "0.0.0.0"]
        )
    assert app.state.settings.metrics_host == "0.0.0.0"
    assert any(
        "metrics on 0.0.0.0:9100 without API key or TLS" in r.getMessage() for r in caplog.records
    )
