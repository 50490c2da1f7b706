"""Logging: ``MAAS_LOG`` switches the ``maas_client`` logger on; credentials never reach it."""

from __future__ import annotations

import logging
import subprocess
import sys

import httpx
import pytest

from maas_client import Client
from maas_client._logs import redact_headers


def test_redact_headers() -> None:
    headers = {"Authorization": "Bearer sk", "X-Api-Key": "k", "Accept": "*/*"}
    assert redact_headers(headers) == {
        "Authorization": "<redacted>",
        "X-Api-Key": "<redacted>",
        "Accept": "*/*",
    }
    assert redact_headers([("cookie", "a=b")]) == {"cookie": "<redacted>"}


def test_debug_lines_hide_the_api_key(caplog: pytest.LogCaptureFixture) -> None:
    http = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    with (
        caplog.at_level(logging.DEBUG, logger="maas_client"),
        Client("http://maas.test", api_key="sk-very-secret", http_client=http) as client,
    ):
        assert client.server.live() is True
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "GET http://maas.test/v2/health/live" in text
    assert '"200 OK"' in text
    assert "<redacted>" in text and "sk-very-secret" not in text
    http.close()


@pytest.mark.parametrize(("level", "expected"), [("debug", "10"), ("info", "20"), ("", "0")])
def test_maas_log_switches_the_logger_on(level: str, expected: str) -> None:
    code = (
        "import logging, maas_client; "
        "maas_client.Client('http://127.0.0.1:9'); "
        "log = logging.getLogger('maas_client'); "
        "print(log.level, len(log.handlers))"
    )
    env = {"MAAS_LOG": level, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [expected, "1" if expected != "0" else "0"]
