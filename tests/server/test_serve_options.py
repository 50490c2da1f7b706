"""``maas serve`` options as operators set them in containers: each one also read from a
``MAAS_SERVER_<OPTION>`` environment variable (a flag on the command line wins), and the
settings ``--graceful-timeout``, ``--max-queue-size`` and ``--max-inflight-body-bytes``.

The command runs for real up to ``uvicorn.Server.run``, which records what maas gave uvicorn;
one test runs a whole server configured by environment variables only.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
import uvicorn
from typer.main import get_command
from typer.testing import CliRunner

from maas_cli import app
from maas_cli._graceful import GracefulServer
from maas_cli.serve import serve
from maas_server import Settings
from tests import models
from tests.conftest import free_port


class Served(Exception):
    """Raised in place of uvicorn's run: maas serve got that far."""


@pytest.fixture
def run_serve(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``run_serve(args, env)``: ``maas serve ARGS`` with ``env`` set, up to uvicorn's run;
    returns the settings, the uvicorn config and the server."""
    import maas_server.access_log

    seen: dict[str, Any] = {}

    def fake_create_app(settings: Settings) -> object:
        seen["settings"] = settings
        return object()

    def fake_run(server: uvicorn.Server, sockets: object = None) -> None:
        seen["config"], seen["server"] = server.config, server
        raise Served

    monkeypatch.setattr(maas_server, "create_app", fake_create_app)
    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    monkeypatch.setattr(maas_server.access_log, "configure_access_logger", lambda: None)
    for name in list(os.environ):
        if name.startswith("MAAS_SERVER_"):
            monkeypatch.delenv(name)

    def run(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
        seen.clear()
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        try:
            with pytest.raises(Served):
                get_command(app).main(["serve", *args], prog_name="maas", standalone_mode=False)
        finally:
            for name in env or {}:
                monkeypatch.delenv(name)
        return dict(seen)

    return run


def test_every_option_has_its_environment_variable() -> None:
    command = get_command(app).commands["serve"]  # type: ignore[attr-defined]
    own = inspect.signature(serve).parameters  # not the global options every command takes
    params = [p for p in command.params if p.name in own]
    assert len(params) == len(own)
    names = {p.name for p in params}
    assert {"repository", "host", "port", "graceful_timeout", "max_queue_size"} <= names
    assert "max_inflight_body_bytes" in names
    for param in params:
        assert param.envvar == f"MAAS_SERVER_{param.name.upper()}", param.name
    help_text = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "250"}).output
    assert "MAAS_SERVER_GRACEFUL_TIMEOUT" in help_text and "MAAS_SERVER_PORT" in help_text


def test_settings_from_the_environment(run_serve: Any, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text('{"keys": []}', encoding="utf-8")
    env = {
        "MAAS_SERVER_REPOSITORY": str(tmp_path),
        "MAAS_SERVER_HOST": "0.0.0.0",
        "MAAS_SERVER_PORT": "9001",
        "MAAS_SERVER_MODEL_CONTROL": "explicit",
        "MAAS_SERVER_LOG_LEVEL": "warning",
        "MAAS_SERVER_ACCESS_LOG": "json",
        "MAAS_SERVER_REQUEST_TIMEOUT": "12.5",
        "MAAS_SERVER_GRACEFUL_TIMEOUT": "7.5",
        "MAAS_SERVER_MAX_QUEUE_SIZE": "9",
        "MAAS_SERVER_MAX_INFLIGHT_BODY_BYTES": "1048576",
        "MAAS_SERVER_MAX_BODY_SIZE": "4096",
        "MAAS_SERVER_MAX_HEADER_SIZE": "2048",
        "MAAS_SERVER_MAX_TENSOR_ELEMENTS": "100",
        "MAAS_SERVER_MAX_BYTES_ELEMENT_SIZE": "50",
        "MAAS_SERVER_PROTECT_HEALTH": "true",
        "MAAS_SERVER_API_KEYS_FILE": str(keys),
        "MAAS_SERVER_CORS_ORIGIN": "https://a.example https://b.example",
        "MAAS_SERVER_ROOT_PATH": "/maas",
        "MAAS_SERVER_METRICS_PORT": "9100",
    }
    seen = run_serve([], env)
    settings, config = seen["settings"], seen["config"]
    assert settings.repository == tmp_path
    assert (config.host, config.port, config.log_level) == ("0.0.0.0", 9001, "warning")
    assert config.root_path == "/maas"
    assert settings.model_control == "explicit" and settings.access_log == "json"
    assert settings.request_timeout_s == 12.5
    assert (settings.max_queue_size, settings.max_inflight_body_bytes) == (9, 1048576)
    assert (settings.max_body_bytes, settings.max_header_bytes) == (4096, 2048)
    assert (settings.max_tensor_elements, settings.max_bytes_element_size) == (100, 50)
    assert settings.open_paths == () and settings.api_keys_file == keys
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.metrics_port == 9100
    server = seen["server"]
    assert isinstance(server, GracefulServer) and server.graceful_timeout == 7.5
    assert config.timeout_graceful_shutdown == 8  # uvicorn takes whole seconds


def test_a_flag_beats_its_environment_variable(run_serve: Any) -> None:
    seen = run_serve(
        ["--port", "9002", "--max-queue-size", "3", "--graceful-timeout", "2"],
        {"MAAS_SERVER_PORT": "9001", "MAAS_SERVER_MAX_QUEUE_SIZE": "9",
         "MAAS_SERVER_GRACEFUL_TIMEOUT": "60"},
    )  # fmt: skip
    assert seen["config"].port == 9002
    assert seen["settings"].max_queue_size == 3
    assert seen["server"].graceful_timeout == 2.0


def test_defaults_are_the_settings_defaults(run_serve: Any, tmp_path: Path) -> None:
    seen = run_serve([str(tmp_path)])
    defaults = Settings(repository=tmp_path)
    settings = seen["settings"]
    assert settings.max_queue_size == defaults.max_queue_size
    assert settings.max_inflight_body_bytes == defaults.max_inflight_body_bytes
    assert settings.request_timeout_s == defaults.request_timeout_s
    assert seen["server"].graceful_timeout == 30.0
    assert seen["config"].timeout_graceful_shutdown == 30


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--graceful-timeout", "-1"),
        ("--graceful-timeout", "nan"),
        ("--request-timeout", "-5"),
        ("--max-queue-size", "-1"),
        ("--max-inflight-body-bytes", "-1"),
    ],
)
def test_negative_values_are_refused(run_serve: Any, flag: str, value: str) -> None:
    with pytest.raises(typer.BadParameter, match="give 0 or more"):
        get_command(app).main(["serve", flag, value], prog_name="maas", standalone_mode=False)


def test_a_bad_environment_value_names_its_variable() -> None:
    """A Kubernetes Service named ``maas-server`` would set MAAS_SERVER_PORT=tcp://...: the
    server refuses to start and says which variable is wrong."""
    env = {"MAAS_SERVER_PORT": "tcp://10.0.0.1:8000", "COLUMNS": "250"}
    result = CliRunner().invoke(app, ["serve"], env=env)
    assert result.exit_code == 2
    assert "MAAS_SERVER_PORT" in result.output


def test_a_server_configured_by_environment_variables_only(tmp_path: Path) -> None:
    models.save(models.mlp_model(), tmp_path / "mlp" / "1" / "model.onnx")
    (tmp_path / "mlp" / "config.json").write_text(json.dumps({"max_batch_size": 8}))
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MAAS_SERVER_")},
        "MAAS_SERVER_REPOSITORY": str(tmp_path),
        "MAAS_SERVER_PORT": str(port),
        "MAAS_SERVER_ACCESS_LOG": "off",
        "MAAS_SERVER_GRACEFUL_TIMEOUT": "10",
        "MAAS_SERVER_MAX_QUEUE_SIZE": "4",
    }
    command = [sys.executable, "-c", "from maas_cli import main; main()", "serve"]
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        ready = False
        while not ready:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "maas serve did not become ready"
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200
            except httpx.TransportError:
                time.sleep(0.05)
        index = httpx.post(f"http://127.0.0.1:{port}/v2/repository/index").json()
        assert [m["name"] for m in index] == ["mlp"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "waiting up to 10 s" in log.read_text()
