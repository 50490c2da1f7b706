"""``maas serve`` with its security and observability flags, as a real process: API keys from a
file and from ``MAAS_SERVER_API_KEY``, the JSON access log on stderr, metrics on their own port,
HTTPS with client certificates. Also the buffered access log handler on its own."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from maas_server.access_log import (
    ACCESS_LOGGER,
    AccessLog,
    AccessLogHandler,
    configure_access_logger,
)
from maas_server.keys_file import add_key
from tests import models
from tests.server.apps import bearer, mlp_request
from tests.waiting import until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_ready(url: str, process: subprocess.Popen[bytes], **client: object) -> None:
    deadline = time.monotonic() + 60
    with httpx.Client(**client) as http:  # type: ignore[arg-type]
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"maas serve exited with {process.returncode}")
            try:
                if http.get(f"{url}/v2/health/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise RuntimeError("maas serve did not become ready")


def serve(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-c", "from maas_cli import main; main()", "serve", *args]
    with log.open("wb") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def small_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve-repo")
    models.save(models.mlp_model(), root / "mlp" / "1" / "model.onnx")
    (root / "mlp" / "config.json").write_text(json.dumps({"max_batch_size": 8}))
    return root


@pytest.fixture
def secured(small_repository: Path, tmp_path: Path) -> Iterator[dict[str, object]]:
    keys = tmp_path / "keys.json"
    key, _ = add_key(keys, "ci", ["infer", "read"], models=["mlp"])
    port, metrics_port = free_port(), free_port()
    log = tmp_path / "serve.log"
    process = serve(
        [str(small_repository), "--port", str(port), "--log-level", "warning",
         "--api-keys-file", str(keys), "--access-log", "json",
         "--metrics-port", str(metrics_port)],
        log,
        env={"MAAS_SERVER_API_KEY": "admin-from-env"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process)
        yield {"url": url, "key": key, "metrics": metrics_port, "log": log, "process": process}
    finally:
        stop(process)


def test_serve_with_keys_access_log_and_metrics_port(secured: dict[str, object]) -> None:
    url, key = str(secured["url"]), str(secured["key"])
    with httpx.Client(base_url=url) as http:
        assert http.get("/v2").status_code == 401
        answer = http.get("/v2/models/mlp", headers=bearer(key, **{"X-Request-ID": "serve-1"}))
        assert answer.status_code == 200 and answer.headers["x-request-id"] == "serve-1"
        request = mlp_request()
        request["headers"].update(bearer(key))
        assert http.post("/v2/models/mlp/infer", **request).status_code == 200
        assert http.post("/v2/repository/index", headers=bearer(key)).status_code == 403
        admin = http.post("/v2/repository/index", headers=bearer("admin-from-env"))
        assert admin.status_code == 200
        assert http.get("/metrics", headers=bearer("admin-from-env")).status_code == 404
    metrics = httpx.get(f"http://127.0.0.1:{secured['metrics']}/metrics")
    assert metrics.status_code == 200
    assert 'nv_inference_request_success{model="mlp",version="1"} 1.0' in metrics.text
    assert 'maas_rejected_requests_total{reason="unauthenticated"} 1.0' in metrics.text

    stop(secured["process"])  # type: ignore[arg-type]
    text = Path(str(secured["log"])).read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    lines = [e for e in lines if e["path"] != "/v2/health/ready"]  # the wait for readiness
    assert [(e["method"], e["path"], e["status"]) for e in lines] == [
        ("GET", "/v2", 401),
        ("GET", "/v2/models/mlp", 200),
        ("POST", "/v2/models/mlp/infer", 200),
        ("POST", "/v2/repository/index", 403),
        ("POST", "/v2/repository/index", 200),
        ("GET", "/metrics", 404),
    ]
    assert lines[1]["request_id"] == "serve-1" and lines[1]["key"] == "ci"
    assert lines[2]["model"] == "mlp" and lines[2]["bytes_in"] > 0
    assert lines[4]["key"] == "admin"
    assert key not in text and "admin-from-env" not in text


def test_serve_with_a_root_path_decides_access_on_the_routed_path(
    tmp_path: Path, small_repository: Path
) -> None:
    """Behind a proxy that strips ``/api`` (``--root-path /api``), a key limited to ``mlp`` is
    still limited to it and the health probes stay open."""
    keys = tmp_path / "keys.json"
    key, _ = add_key(keys, "mlp-user", ["infer", "read"], models=["mlp"])
    port = free_port()
    process = serve(
        [str(small_repository), "--port", str(port), "--log-level", "warning",
         "--api-keys-file", str(keys), "--root-path", "/api"],
        tmp_path / "serve.log",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process)  # an open probe, without a key
        with httpx.Client(base_url=url) as http:
            assert http.get("/v2/health/live").status_code == 200
            unload = http.post("/v2/repository/models/mlp/unload", headers=bearer(key))
            assert unload.status_code == 403
            assert http.get("/v2/models/other", headers=bearer(key)).status_code == 403
            assert http.get("/v2/models/mlp").status_code == 401
            assert http.get("/v2/models/mlp", headers=bearer(key)).status_code == 200
            request = mlp_request()
            request["headers"].update(bearer(key))
            assert http.post("/v2/models/mlp/infer", **request).status_code == 200
    finally:
        stop(process)


def test_serve_refuses_a_bad_root_path(small_repository: Path, tmp_path: Path) -> None:
    process = serve([str(small_repository), "--root-path", "api/"], tmp_path / "log")
    assert process.wait(timeout=60) == 2
    assert "--root-path" in (tmp_path / "log").read_text()


def test_serve_over_mutual_tls(small_repository: Path, tmp_path: Path) -> None:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("ci@maas.test")
    paths = {name: tmp_path / name for name in ("ca.pem", "cert.pem", "key.pem", "client.pem")}
    ca.cert_pem.write_to_path(paths["ca.pem"])
    server.cert_chain_pems[0].write_to_path(paths["cert.pem"])
    server.private_key_pem.write_to_path(paths["key.pem"])
    client.private_key_and_cert_chain_pem.write_to_path(paths["client.pem"])
    port = free_port()
    process = serve(
        [str(small_repository), "--port", str(port), "--log-level", "warning",
         "--ssl-certfile", str(paths["cert.pem"]), "--ssl-keyfile", str(paths["key.pem"]),
         "--ssl-ca-certs", str(paths["ca.pem"])],
        tmp_path / "serve.log",
    )  # fmt: skip
    context = ssl.create_default_context(cafile=str(paths["ca.pem"]))
    context.load_cert_chain(str(paths["client.pem"]))
    try:
        url = f"https://127.0.0.1:{port}"
        wait_until_ready(url, process, verify=context)
        with httpx.Client(base_url=url, verify=context) as http:
            assert http.post("/v2/models/mlp/infer", **mlp_request()).status_code == 200
        no_cert = ssl.create_default_context(cafile=str(paths["ca.pem"]))
        with (
            httpx.Client(base_url=url, verify=no_cert) as http,
            pytest.raises(httpx.TransportError),
        ):
            http.get("/v2/health/live")
    finally:
        stop(process)


def old_tls_client(ca: Path, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that offers ``version`` at most, with OpenSSL's own floor lowered for it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(ca))
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0 and 1.1 are, indeed
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = version
    return context


def test_serve_refuses_clients_older_than_tls_1_2(small_repository: Path, tmp_path: Path) -> None:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    server.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    server.private_key_pem.write_to_path(tmp_path / "key.pem")
    port = free_port()
    process = serve(
        [str(small_repository), "--port", str(port), "--log-level", "warning",
         "--ssl-certfile", str(tmp_path / "cert.pem"), "--ssl-keyfile", str(tmp_path / "key.pem")],
        tmp_path / "serve.log",
    )  # fmt: skip
    try:
        url = f"https://127.0.0.1:{port}"
        trusted = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        wait_until_ready(url, process, verify=trusted)
        for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
            context = old_tls_client(tmp_path / "ca.pem", version)
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
                pytest.raises(ssl.SSLError),
            ):
                context.wrap_socket(sock, server_hostname="127.0.0.1")
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            context = old_tls_client(tmp_path / "ca.pem", version)
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
                context.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
            ):
                expected = "TLSv1.2" if version == ssl.TLSVersion.TLSv1_2 else "TLSv1.3"
                assert tls.version() == expected
        with httpx.Client(base_url=url, verify=trusted) as http:
            assert http.post("/v2/models/mlp/infer", **mlp_request()).status_code == 200
    finally:
        stop(process)


def test_serve_refuses_inconsistent_tls_flags(small_repository: Path, tmp_path: Path) -> None:
    process = serve([str(small_repository), "--ssl-certfile", "x.pem"], tmp_path / "log")
    assert process.wait(timeout=60) == 2
    assert "--ssl-keyfile" in (tmp_path / "log").read_text()


# --- the buffered handler ----------------------------------------------------------------------


def test_access_log_handler_buffers_and_flushes() -> None:
    out = io.StringIO()
    handler = AccessLogHandler(out, flush_interval=3600)
    handler.write_line("first")
    record = logging.LogRecord(ACCESS_LOGGER, logging.INFO, __file__, 1, "second %d", (2,), None)
    assert handler.handle(record)
    assert out.getvalue() == ""  # nothing written before a flush
    handler.flush()
    assert out.getvalue() == "first\nsecond 2\n"
    handler.write_line("third")
    handler.close()  # closing flushes what is left
    assert out.getvalue().endswith("third\n")


def test_access_log_handler_flushes_on_its_own() -> None:
    out = io.StringIO()
    handler = AccessLogHandler(out, flush_interval=0.02)
    try:
        handler.write_line("soon")
        deadline = time.monotonic() + 5
        while "soon" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert out.getvalue() == "soon\n"
    finally:
        handler.close()


def test_configured_logger_takes_entries_without_log_records() -> None:
    out = io.StringIO()
    logger = configure_access_logger(out, flush_interval=3600)
    try:
        log = AccessLog("text", logger)
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/v2/models/mlp/versions/2/ready",
            "headers": [(b"x-request-id", b"abc")],
            "client": ("127.0.0.1", 9),
        }
        request_id = log.request_id(scope)
        assert request_id == b"abc"
        log.write(scope, request_id, 200, 10, 0.0015)
        logger.handlers[0].flush()
        line = out.getvalue().strip()
        assert line.endswith(
            '127.0.0.1:9 "GET /v2/models/mlp/versions/2/ready HTTP/1.1" 200 in=0 out=10 '
            "1.50ms id=abc key=- model=mlp version=2"
        )
        assert line[:4].isdigit() and line[23] == "Z"  # 2024-05-01T12:00:00.123Z
    finally:
        for handler in logger.handlers:
            handler.close()
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


class _WriterRecordingIO(io.StringIO):
    """A text buffer that remembers which threads wrote into it."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: set[threading.Thread] = set()

    def write(self, text: str) -> int:
        self.writers.add(threading.current_thread())
        return super().write(text)


async def test_the_event_loop_flushes_what_it_wrote() -> None:
    out = _WriterRecordingIO()
    logger = configure_access_logger(out, flush_interval=0.01)
    try:
        log = AccessLog("json", logger)
        scope = {"type": "http", "method": "GET", "path": "/v2", "headers": [], "client": None}
        log.write(scope, log.request_id(scope), 200, 3, 0.001)
        assert out.getvalue() == ""  # nothing written before a flush
        await until(lambda: out.getvalue())
        # Written by the loop itself, not by the handler's background thread.
        assert out.writers == {threading.current_thread()}
        (line,) = out.getvalue().splitlines()
        entry = json.loads(line)
        assert entry["path"] == "/v2" and entry["status"] == 200 and entry["client"] == "-"
        assert len(entry["request_id"]) == 24
    finally:
        for handler in logger.handlers:
            handler.close()
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
