"""Graceful shutdown of ``maas serve``, as a real process on a free loopback port: on SIGTERM (or
Ctrl-C) readiness turns 503 first, new requests get 503 + ``Retry-After``, an open generation
stream ends with an error event, the request in flight finishes, and the process exits 0 within
``--graceful-timeout``; past it, the process still exits. Also the drain of the app in-process.

To keep a request in flight for as long as a test needs, the server process is started through
:data:`LAUNCHER`, which holds two model calls on a gate (a folder): a run of the ``held`` model
with 2 rows (on the model's own worker thread, as a long ONNX Runtime call would), and every
step of the generation engine after its third. A held call first creates ``entered-<what>`` in
the folder, then waits until ``open`` exists. The tests wait on those files and on the server's
answers, with deadlines; nothing is sequenced by sleeping.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from maas_server import Settings, default_repository
from maas_server.shutdown import CUT_MESSAGE, SHUTDOWN_MESSAGE
from tests import models
from tests.conftest import free_port
from tests.server.apps import asgi_app

LAUNCHER = """
import os, sys, time
from pathlib import Path

from maas_server.generation import GenerationEngine
from maas_server.runtime import OnnxModel

gate = Path(os.environ["MAAS_TEST_GATE"])


def hold(what):
    (gate / f"entered-{what}").touch()
    while not (gate / "open").exists():
        time.sleep(0.01)


run_sync = OnnxModel.run_sync


def held_run_sync(self, feeds, output_names):
    if self.name == "held" and feeds["x"].shape[0] == 2:
        hold("held")
    return run_sync(self, feeds, output_names)


execute = GenerationEngine._execute
runs = 0


def held_execute(self, *args):
    global runs
    runs += 1
    if runs > 3:
        hold("generation")
    return execute(self, *args)


OnnxModel.run_sync = held_run_sync
GenerationEngine._execute = held_execute
from maas_cli import main

main()
"""

WIDTH = models.SLOW_MODEL_WIDTH


@pytest.fixture(scope="module")
def shutdown_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shutdown_repository")
    shutil.copytree(default_repository() / "tiny_gpt", root / "tiny_gpt")
    models.save(models.slow_model(0.05), root / "held" / "1" / "model.onnx")
    return root


def until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s: {what}")
        time.sleep(0.01)


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    url: str
    gate: Path
    log: Path

    def open_gate(self) -> None:
        (self.gate / "open").touch()

    def entered(self, what: str) -> bool:
        return (self.gate / f"entered-{what}").exists()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def launch(shutdown_repository: Path, tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(*flags: str) -> Served:
        port = free_port()
        gate = tmp_path / f"gate-{len(started)}"
        gate.mkdir()
        log = tmp_path / f"serve-{len(started)}.log"
        command = [sys.executable, "-c", LAUNCHER, "serve", str(shutdown_repository)]
        command += ["--port", str(port), "--access-log", "off", *flags]
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "MAAS_TEST_GATE": str(gate)},
            )
        served = Served(process, f"http://127.0.0.1:{port}", gate, log)
        started.append(served)

        def ready() -> bool:
            assert process.poll() is None, served.text()
            try:
                return httpx.get(f"{served.url}/v2/health/ready").status_code == 200
            except httpx.TransportError:
                return False

        until(ready, 60, "maas serve ready")
        return served

    yield start
    for served in started:
        served.open_gate()  # no model thread left waiting
        if served.process.poll() is None:
            served.process.kill()
        served.process.wait()


def held_request() -> dict[str, Any]:
    data = np.arange(2 * WIDTH, dtype=np.float32).reshape(2, WIDTH) / WIDTH
    body = {"inputs": [{"name": "x", "shape": [2, WIDTH], "datatype": "FP32",
                        "data": data.ravel().tolist()}]}  # fmt: skip
    return body


class InBackground:
    """``function()`` on a thread: its result or its exception, once it returns."""

    def __init__(self, function: Callable[[], httpx.Response]) -> None:
        self.result: httpx.Response | None = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = function()
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()


def post_held(url: str) -> InBackground:
    return InBackground(
        lambda: httpx.post(f"{url}/v2/models/held/infer", json=held_request(), timeout=60)
    )


def sse_data(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        if line.startswith("data: "):
            yield line[6:]


def test_sigterm_drains_then_exits_0(launch: Callable[..., Served]) -> None:
    served = launch("--graceful-timeout", "30")
    url = served.url
    held = post_held(url)
    until(lambda: served.entered("held"), what="the held model call running")
    body = {"model": "tiny_gpt", "prompt": "Copyright", "max_tokens": 200, "stream": True}
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", f"{url}/v1/completions", json=body) as stream,
    ):
        assert stream.status_code == 200
        events = sse_data(stream.iter_lines())
        first = json.loads(next(events))
        assert first["choices"][0]["text"]
        until(lambda: served.entered("generation"), what="the generation held mid-stream")

        served.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        until(
            lambda: http.get(f"{url}/v2/health/ready").status_code == 503,
            what="readiness 503 after SIGTERM",
        )
        assert not held.done  # readiness turned false while the request was in flight
        assert http.get(f"{url}/v2/health/live").status_code == 200
        refused = http.get(f"{url}/v2/models/held")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["connection"] == "close"
        assert refused.json() == {"error": SHUTDOWN_MESSAGE}

        # the open stream ends with an error event, without [DONE]
        rest = list(events)
    last = json.loads(rest[-1])
    assert last["error"]["type"] == "service_unavailable"
    assert "shutting down" in last["error"]["message"]
    assert "[DONE]" not in rest
    assert not held.done and served.process.poll() is None

    served.open_gate()  # the held call returns: the request in flight completes
    until(lambda: held.done, what="the held request answered")
    assert held.error is None and held.result is not None
    assert held.result.status_code == 200
    (output,) = held.result.json()["outputs"]
    assert output["shape"] == [2, WIDTH]
    assert served.process.wait(timeout=30) == 0
    assert time.monotonic() - signalled < 30
    log = served.text()
    assert "shutting down: not ready, new requests get 503" in log
    assert "drained: no request in flight" in log
    assert "Traceback" not in log


def test_drain_past_the_graceful_timeout_still_exits(launch: Callable[..., Served]) -> None:
    served = launch("--graceful-timeout", "1")
    held = post_held(served.url)
    until(lambda: served.entered("held"), what="the held model call running")
    served.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    # the model call never returns: the request is cancelled at 1 s and told to retry
    # elsewhere; the process, whose model thread is still busy, ends itself at 1 + 5 s
    until(lambda: held.done, what="the held request answered")
    assert held.error is None and held.result is not None
    assert held.result.status_code == 503
    assert held.result.headers["retry-after"] == "1"
    assert held.result.json() == {"error": CUT_MESSAGE}
    status = served.process.wait(timeout=30)
    elapsed = time.monotonic() - signalled
    assert status == 1
    assert elapsed < 1 + 5 + 10  # generous for a busy machine; the log below says why it ended
    log = served.text()
    assert "1 request(s) still in flight after the graceful timeout of 1 s" in log
    assert "exiting now with status 1" in log
    assert "Exception in ASGI application" not in log


def test_ctrl_c_with_nothing_in_flight_exits_0_at_once(launch: Callable[..., Served]) -> None:
    served = launch("--graceful-timeout", "30")
    ok = httpx.post(f"{served.url}/v2/models/held/infer", json=_one_row())
    assert ok.status_code == 200
    served.process.send_signal(signal.SIGINT)
    assert served.process.wait(timeout=25) == 0
    log = served.text()
    assert "drained: no request in flight" in log
    assert "KeyboardInterrupt" not in log


def _one_row() -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [1, WIDTH], "datatype": "FP32",
                        "data": [0.5] * WIDTH}]}  # fmt: skip


# --- the drain of the app, in-process -----------------------------------------------------------


async def test_drain_ends_a_generate_stream_refuses_new_requests_and_cuts_the_rest(
    shutdown_repository: Path,
) -> None:
    settings = Settings(repository=shutdown_repository)
    async with asgi_app(settings, models=("tiny_gpt",)) as (app, client):
        engine = app.state.generation.engine("tiny_gpt", None)
        gate = threading.Event()
        original = engine._execute
        runs = 0

        def execute(*args: Any) -> Any:
            nonlocal runs
            runs += 1
            if runs > 3:
                assert gate.wait(30), "the test never opened the gate"
            return original(*args)

        engine._execute = execute
        try:
            assert (await client.get("/v2/health/ready")).status_code == 200
            body = {"text_input": "Copyright", "max_tokens": 200, "ignore_eos": True}
            answer = asyncio.create_task(
                client.post("/v2/models/tiny_gpt/generate_stream", json=body)
            )
            deadline = time.monotonic() + 30
            while runs <= 3:  # the engine is held: the stream is open
                assert time.monotonic() < deadline and not answer.done()
                await asyncio.sleep(0.01)
            shutdown = app.state.shutdown
            assert shutdown.inflight == 1
            short = {"text_input": "Copyright", "max_tokens": 4}
            waiting = asyncio.create_task(client.post("/v2/models/tiny_gpt/generate", json=short))
            while shutdown.inflight < 2:  # the second request waits in the held engine
                assert time.monotonic() < deadline and not waiting.done()
                await asyncio.sleep(0.01)
            shutdown.begin()
            stream = await asyncio.wait_for(answer, 30)
            assert (await client.get("/v2/health/ready")).status_code == 503
            assert (await client.get("/v2/health/live")).status_code == 200
            refused = await client.post("/v2/models/tiny_gpt/generate", json=body)
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            metrics = await client.get("/metrics")
            assert metrics.status_code == 200
            assert 'maas_rejected_requests_total{reason="shutting_down"} 1.0' in metrics.text
            # the request waiting in the engine is still in flight; cut, it is told to retry
            assert shutdown.inflight == 1 and not waiting.done()
            assert await shutdown.cut(5)
            cut = await waiting
            assert cut.status_code == 503 and cut.headers["retry-after"] == "1"
            assert cut.json() == {"error": CUT_MESSAGE}
        finally:
            gate.set()
            del engine._execute
    blocks = stream.text.strip().split("\n\n")
    assert blocks[-1].startswith("event: error\ndata: ")
    assert json.loads(blocks[-1].split("data: ", 1)[1]) == {
        "error": f"{SHUTDOWN_MESSAGE}; the stream was cut"
    }
    assert all(b.startswith("data: ") for b in blocks[:-1]) and len(blocks) >= 2
