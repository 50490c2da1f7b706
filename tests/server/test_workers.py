"""``maas serve --workers 2`` as a real process tree on a free loopback port.

Every check that "all workers" do something asks on fresh connections (a new TCP connection per
question, so that the kernel hands them to either worker) and pairs each answer with ``GET /v2``
on the same connection, whose ``maas_worker`` field names the process that answered: a check
passes only once it has seen every serving worker answer, and fails if any answer is wrong.
Nothing is sequenced by sleeping: the tests wait on the server's answers, with deadlines.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest

from maas_client import Client
from maas_server.keys_file import add_key, revoke_key
from maas_server.threads import available_cpus
from tests import models
from tests.conftest import _put, free_port, wait_for

DEADLINE_S = 90.0  # two busy cores start two workers, each loading its models

LAUNCHER = """
import os
import time
from pathlib import Path

from maas_server.runtime import OnnxModel

# At the top level: the spawned workers run this file too (as __mp_main__), so a run of the
# 'held' model with 2 rows, in any worker, creates entered-<pid> and waits until 'open' exists.
gate = Path(os.environ["MAAS_TEST_GATE"])
run_sync = OnnxModel.run_sync


def held_run_sync(self, feeds, output_names):
    if self.name == "held" and feeds["x"].shape[0] == 2:
        (gate / f"entered-{os.getpid()}").touch()
        while not (gate / "open").exists():
            time.sleep(0.01)
    return run_sync(self, feeds, output_names)


OnnxModel.run_sync = held_run_sync

if __name__ == "__main__":
    from maas_cli import main

    main()
"""


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    headers: dict[str, str]

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def ask(self, method: str, path: str, **kwargs: Any) -> tuple[int, httpx.Response]:
        """``method path`` on a fresh connection; (pid of the worker that answered, answer)."""
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=60) as client:
            meta = client.get("/v2")
            assert meta.status_code == 200, meta.text
            answer = client.request(method, path, **kwargs)
        return int(meta.json()["maas_worker"]["pid"]), answer

    def serving(self) -> dict[int, int]:
        """pid -> index of the serving workers, as a worker sees them."""
        meta = httpx.get(f"{self.url}/v2", headers=self.headers, timeout=60).json()
        return {w["pid"]: w["index"] for w in meta["maas_worker"]["serving"]}

    def on_every_worker(
        self,
        method: str,
        path: str,
        check: Callable[[httpx.Response], bool],
        *,
        eventually: bool = False,
        **kwargs: Any,
    ) -> None:
        """Ask until every serving worker has answered; every answer must pass ``check`` (with
        ``eventually``: until every worker has given an answer that passes)."""
        seen: set[int] = set()
        asked = 0
        # first a burst of questions at once, right after the change was answered
        with ThreadPoolExecutor(8) as pool:
            burst = list(pool.map(lambda _: self.ask(method, path, **kwargs), range(8)))
        for pid, answer in burst:
            passed = check(answer)
            assert passed or eventually, (pid, answer.status_code, answer.text)
            if passed:
                seen.add(pid)

        def all_seen() -> bool:
            nonlocal asked
            pid, answer = self.ask(method, path, **kwargs)
            asked += 1
            passed = check(answer)
            assert passed or eventually, (pid, answer.status_code, answer.text)
            if passed:
                seen.add(pid)
            return seen >= set(self.serving())

        wait_for(all_seen, DEADLINE_S)
        assert asked + len(burst) >= 2


def workers_repository(root: Path) -> Path:
    _put(root, "mlp", models.mlp_model(), {"max_batch_size": 64})
    _put(root, "add", models.add_model(), {"max_batch_size": 8})
    _put(root, "held", models.slow_model(0.05))
    return root


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    gate = tmp_path / "gate"
    gate.mkdir()
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)

    def start(*flags: str, headers: dict[str, str] | None = None) -> Served:
        repository = workers_repository(tmp_path / f"repository-{len(started)}")
        port = free_port()
        log = tmp_path / f"serve-{len(started)}.log"
        command = [sys.executable, str(launcher), "serve", str(repository)]
        command += ["--port", str(port), "--access-log", "off", "--workers", "2", *flags]
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "MAAS_TEST_GATE": str(gate)},
            )
        served = Served(process, f"http://127.0.0.1:{port}", log, headers or {})
        started.append(served)

        def up() -> bool:
            assert process.poll() is None, served.text()
            try:
                return len(served.serving()) == 2
            except (httpx.TransportError, KeyError, ValueError):
                return False

        wait_for(up, DEADLINE_S)
        return served

    yield start
    (gate / "open").touch()  # no model thread left waiting
    for served in started:
        if served.process.poll() is None:
            served.process.send_signal(signal.SIGTERM)
            try:
                served.process.wait(60)
            except subprocess.TimeoutExpired:
                served.process.kill()
                served.process.wait()


def _ready(answer: httpx.Response) -> bool:
    return answer.status_code == 200


def _not_ready(answer: httpx.Response) -> bool:
    return answer.status_code == 503


def _infer_body(rows: int = 1) -> dict[str, Any]:
    data = np.ones((rows, 64), dtype=np.float32)
    return {
        "inputs": [
            {
                "name": "input",
                "shape": [rows, 64],
                "datatype": "FP32",
                "data": data.ravel().tolist(),
            }
        ]
    }


def _model_bytes(model: onnx.ModelProto) -> bytes:
    buffer = io.BytesIO()
    onnx.save(model, buffer)
    return buffer.getvalue()


def test_changes_through_the_api_answer_once_every_worker_serves_them(
    launch: Callable[..., Served],
) -> None:
    served = launch("--model-control", "explicit")
    meta = httpx.get(f"{served.url}/v2").json()["maas_worker"]
    assert meta["count"] == 2
    assert meta["cpus"] == max(1, available_cpus() // 2)  # the thread budget, shared out
    served.on_every_worker("GET", "/v2/models/mlp/ready", _not_ready)

    answer = httpx.post(f"{served.url}/v2/repository/models/mlp/load", timeout=60)
    assert answer.status_code == 200, answer.text
    served.on_every_worker("GET", "/v2/models/mlp/ready", _ready)
    served.on_every_worker("POST", "/v2/models/mlp/infer", _ready, json=_infer_body())

    answer = httpx.post(f"{served.url}/v2/repository/models/mlp/unload", timeout=60)
    assert answer.status_code == 200, answer.text
    served.on_every_worker("GET", "/v2/models/mlp/ready", _not_ready)

    # a load with a configuration override: every worker serves the override
    override = '{"max_batch_size": 16}'
    answer = httpx.post(
        f"{served.url}/v2/repository/models/mlp/load",
        json={"parameters": {"config": override}},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    served.on_every_worker(
        "GET", "/v2/models/mlp/config", lambda a: a.json()["max_batch_size"] == 16
    )

    # a publication: every worker serves version 2 as the default at once
    answer = httpx.put(
        f"{served.url}/v2/repository/models/mlp/versions/2",
        content=_model_bytes(models.mlp_model(seed=1)),
        timeout=60,
    )
    assert answer.status_code == 201, answer.text
    served.on_every_worker(
        "POST",
        "/v2/models/mlp/infer",
        lambda a: a.status_code == 200 and a.json()["model_version"] == "2",
        json=_infer_body(),
    )
    # the default version changed back: every worker answers unversioned requests with 1
    answer = httpx.put(
        f"{served.url}/v2/repository/models/mlp/default", json={"version": "1"}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    served.on_every_worker(
        "POST",
        "/v2/models/mlp/infer",
        lambda a: a.status_code == 200 and a.json()["model_version"] == "1",
        json=_infer_body(),
    )
    # the repository index is the same whichever worker answers
    served.on_every_worker(
        "POST",
        "/v2/repository/index",
        lambda a: (
            {(r["name"], r.get("version"), r["state"]) for r in a.json()}
            == {
                ("add", None, "UNAVAILABLE"),
                ("held", None, "UNAVAILABLE"),
                ("mlp", "1", "READY"),
                ("mlp", "2", "READY"),
            }
        ),
    )


def test_a_change_answers_only_once_every_worker_serves_it(
    launch: Callable[..., Served],
) -> None:
    """One worker is stopped (SIGSTOP): it accepts nothing and applies nothing. A load through
    the other does not answer while it is stopped, though it serves the model already; after
    --worker-sync-timeout it answers 504 naming the late worker, which serves the model once it
    runs again."""
    served = launch("--model-control", "explicit", "--worker-sync-timeout", "3")
    late = max(served.serving())
    os.kill(late, signal.SIGSTOP)
    try:
        load = InBackground(
            lambda: httpx.post(f"{served.url}/v2/repository/models/mlp/load", timeout=60)
        )
        # the worker that received the load serves the model (only it accepts connections)...
        wait_for(lambda: served.ask("GET", "/v2/models/mlp/ready")[1].status_code == 200, 60)
        assert not load.done  # ...but the load has not answered: the other worker does not
        wait_for(lambda: load.done, 60)
    finally:
        os.kill(late, signal.SIGCONT)
    assert load.result is not None, load.error
    assert load.result.status_code == 504, load.result.text
    assert f"(pid {late}) did not apply it within 3 s" in load.result.json()["error"]
    served.on_every_worker("GET", "/v2/models/mlp/ready", _ready, eventually=True)
    # the next change waits for both, and both serve it when it answers
    answer = httpx.post(f"{served.url}/v2/repository/models/mlp/unload", timeout=60)
    assert answer.status_code == 200, answer.text
    served.on_every_worker("GET", "/v2/models/mlp/ready", _not_ready)


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


def _metric(text: str, family: str, model: str) -> int:
    found = re.search(rf'^{family}{{model="{model}",version="1"}} ([0-9.e+]+)$', text, re.M)
    return int(float(found.group(1))) if found else 0


def test_metrics_and_statistics_count_the_requests_of_every_worker(
    launch: Callable[..., Served],
) -> None:
    metrics_port = free_port()
    served = launch("--metrics-port", str(metrics_port))  # served by worker 0 for all

    def counts() -> tuple[int, int]:
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=60).text
        stats = httpx.get(f"{served.url}/v2/models/add/stats", timeout=60).json()
        (entry,) = stats["model_stats"]
        return _metric(metrics, "nv_inference_request_success", "add"), entry["inference_count"]

    assert counts() == (0, 0)
    body = {
        "inputs": [
            {"name": n, "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
            for n in ("a", "b")
        ]
    }
    pids: list[int] = []
    sent = 0
    while sent < 40 or len(set(pids)) < 2:
        pid, answer = served.ask("POST", "/v2/models/add/infer", json=body)
        assert answer.status_code == 200, answer.text
        pids.append(pid)
        sent += 1
        assert sent < 400, "the connections never reached the second worker"
    # every request counted, whichever worker answered it, as soon as they are all answered
    assert counts() == (sent, sent)
    # and counted once: asking again does not add anything
    assert counts() == (sent, sent)


def test_a_killed_worker_is_replaced_and_the_client_retries_lose_nothing(
    launch: Callable[..., Served],
) -> None:
    served = launch("--model-control", "explicit")
    answer = httpx.post(f"{served.url}/v2/repository/models/mlp/load", timeout=60)
    assert answer.status_code == 200, answer.text
    before = served.serving()
    x = np.ones((1, 64), dtype=np.float32)
    done: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    views: list[dict[int, int]] = []

    def send() -> None:
        with Client(served.url, max_retries=5, timeout=60) as client:
            while not stop.is_set():
                try:
                    result = client.infer("mlp", x, binary=True)
                    assert result["output"].shape == (1, 10)
                    done.append(1)
                except BaseException as exc:
                    errors.append(exc)
                    return

    threads = [threading.Thread(target=send, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(done) >= 50 or bool(errors), DEADLINE_S)
        victim = max(before)
        os.kill(victim, signal.SIGKILL)
        killed_at = len(done)

        # a replacement joins, having applied the load made before it started
        def replaced() -> bool:
            view = served.serving()  # one look: two could come from two workers
            views.append(view)
            return len(view) == 2 and victim not in view

        wait_for(replaced, DEADLINE_S)
        wait_for(lambda: len(done) >= killed_at + 50 or bool(errors), DEADLINE_S)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not errors, errors[0]
    (replacement,) = set(views[-1]) - set(before)
    assert views[-1][replacement] == before[victim]  # the same worker index
    served.on_every_worker("GET", "/v2/models/mlp/ready", _ready)
    assert "exited (status -9): starting a replacement" in served.text()


def test_an_api_key_file_change_reaches_every_worker(
    launch: Callable[..., Served], tmp_path: Path
) -> None:
    keys = tmp_path / "keys.json"
    admin, _entry = add_key(keys, "admin", ["admin", "read", "infer"])
    served = launch("--api-keys-file", str(keys), headers={"Authorization": f"Bearer {admin}"})
    new, _entry = add_key(keys, "reader", ["read"])
    reader = {"Authorization": f"Bearer {new}"}
    # each worker re-reads the file within its reload interval (1 s)
    served.on_every_worker("GET", "/v2/models/add", _ready, eventually=True, headers=reader)
    revoke_key(keys, "reader")
    served.on_every_worker(
        "GET", "/v2/models/add", lambda a: a.status_code == 401, eventually=True, headers=reader
    )


def test_sigterm_drains_every_worker_and_exits_0(
    launch: Callable[..., Served], tmp_path: Path
) -> None:
    """A request is held in a model call on one worker; SIGTERM to the supervisor: both workers
    drain (new requests 503), the held request completes, then everything exits 0."""
    served = launch("--graceful-timeout", "30")
    pids = list(served.serving())
    rows = np.ones((2, models.SLOW_MODEL_WIDTH), dtype=np.float32)
    body = {"inputs": [{"name": "x", "shape": [2, models.SLOW_MODEL_WIDTH], "datatype": "FP32",
                        "data": rows.ravel().tolist()}]}  # fmt: skip
    held = InBackground(
        lambda: httpx.post(f"{served.url}/v2/models/held/infer", json=body, timeout=60)
    )
    wait_for(lambda: any((tmp_path / "gate").glob("entered-*")), DEADLINE_S)
    started = time.monotonic()
    served.process.send_signal(signal.SIGTERM)
    wait_for(lambda: served.text().count("shutting down: not ready") == 2, DEADLINE_S)
    for _ in range(6):  # fresh connections, whichever worker takes them: refused
        refused = httpx.get(f"{served.url}/v2/models/add", timeout=60)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
    assert not held.done and served.process.poll() is None
    (tmp_path / "gate" / "open").touch()  # the held model call returns
    wait_for(lambda: held.done, DEADLINE_S)
    assert held.result is not None and held.result.status_code == 200, held.error
    assert served.process.wait(60) == 0, served.text()
    assert time.monotonic() - started < 30
    for pid in pids:
        wait_for(lambda pid=pid: not _alive(pid), DEADLINE_S)
    assert served.text().count("drained: no request in flight") == 2
    assert "Traceback" not in served.text()


def test_workers_whose_supervisor_is_killed_exit_by_themselves(
    launch: Callable[..., Served],
) -> None:
    served = launch()
    pids = list(served.serving())
    served.process.kill()
    served.process.wait()
    for pid in pids:
        wait_for(lambda pid=pid: not _alive(pid), DEADLINE_S)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by init) counts as gone
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_a_bad_worker_count_is_refused(value: str) -> None:
    from typer.testing import CliRunner

    from maas_cli._app import app

    result = CliRunner().invoke(app, ["serve", "--workers", value])
    assert result.exit_code == 2
    assert "give a number of 1 or more, or 'auto'" in result.output


def test_auto_counts_the_cpus_the_process_may_use() -> None:
    from maas_cli._workers import worker_count

    assert worker_count("auto") == available_cpus()
    assert worker_count(" 3 ") == 3


def test_workers_that_cannot_start_stop_the_supervisor(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text("{not json", encoding="utf-8")
    repository = workers_repository(tmp_path / "repository")
    command = [sys.executable, "-m", "maas_cli", "serve", str(repository), "--workers", "2"]
    command += ["--port", str(free_port()), "--api-keys-file", str(keys)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE_S)
    assert done.returncode == 2, done.stderr
    assert "maas serve: cannot start:" in done.stderr
    assert "could not start (status 2)" in done.stderr


def test_the_workers_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    import maas_cli._workers
    from maas_cli._app import app

    seen: dict[str, Any] = {}

    def fake_serve_workers(spec: Any, count: int, host: str, port: int, *rest: Any) -> int:
        seen.update(spec=spec, count=count, host=host, port=port)
        return 0

    monkeypatch.setattr(maas_cli._workers, "serve_workers", fake_serve_workers)
    monkeypatch.setenv("MAAS_SERVER_WORKERS", "3")
    monkeypatch.setenv("MAAS_SERVER_WORKER_SYNC_TIMEOUT", "7.5")
    repository = workers_repository(tmp_path / "repository")
    result = CliRunner().invoke(app, ["serve", str(repository), "--port", "9123"])
    assert result.exit_code == 0, result.output
    assert (seen["count"], seen["port"]) == (3, 9123)
    assert seen["spec"].sync_timeout_s == 7.5
    assert seen["spec"].settings.repository == repository
