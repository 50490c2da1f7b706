"""One pipeline whatever the scheme: event hooks, limits and timeouts behave the same over the
lean transport (``http://``), httpx's own (``https://``) and an injected ``http_client``."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import trustme

from maas_client import APITimeoutError, AsyncClient, Client
from maas_client._async._transports import AsyncClientAdapter
from maas_client._sync._transports import ClientAdapter
from maas_client._transport import AsyncLeanTransport, LeanTransport
from maas_server import Settings
from tests.conftest import RunningServer, start_server


@pytest.fixture(autouse=True)
def _lean_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the lean transport: they use it whatever MAAS_TRANSPORT says."""
    monkeypatch.setenv("MAAS_TRANSPORT", "lean")


X = np.random.default_rng(5).standard_normal((2, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, ssl.SSLContext]:
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(folder / "ca.pem")
    cert = ca.issue_cert("127.0.0.1")
    (folder / "server.pem").write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(folder / "server.key")
    context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
    return folder / "server.pem", folder / "server.key", context


@pytest.fixture(scope="module")
def https_server(repository: Path, tls: tuple[Path, Path, ssl.SSLContext]) -> Iterator[str]:
    certfile, keyfile, _ = tls
    running: RunningServer = start_server(
        Settings(repository=repository, strict_readiness=False),
        ssl_certfile=str(certfile),
        ssl_keyfile=str(keyfile),
    )
    yield running.url
    running.stop()


Recorded = list[tuple[str, object]]


def _hooks(seen: Recorded) -> dict[str, list[Callable[..., Any]]]:
    def on_request(request: httpx.Request) -> None:
        seen.append(("request", request.url.path))

    def on_response(response: httpx.Response) -> None:
        seen.append(("response", response.status_code))

    return {"request": [on_request], "response": [on_response]}


def _async_hooks(seen: Recorded) -> dict[str, list[Callable[..., Any]]]:
    async def on_request(request: httpx.Request) -> None:
        seen.append(("request", request.url.path))

    async def on_response(response: httpx.Response) -> None:
        seen.append(("response", response.status_code))

    return {"request": [on_request], "response": [on_response]}


EXPECTED = [
    ("request", "/v2/health/live"),
    ("response", 200),
    ("request", "/v2/models/nope"),
    ("response", 404),
]


def _exercise(client: Client) -> None:
    assert client.server.live() is True
    with pytest.raises(Exception, match="404"):
        client.models.get("nope")


@pytest.mark.parametrize("kind", ["lean", "https", "injected"])
def test_hooks_and_transport_whatever_the_scheme(
    kind: str, server_url: str, https_server: str, tls: tuple[Path, Path, ssl.SSLContext]
) -> None:
    seen: Recorded = []
    context = tls[2]
    limits = httpx.Limits(max_connections=2)
    if kind == "lean":
        client = Client(server_url, event_hooks=_hooks(seen), limits=limits)
        expected_transport: type = LeanTransport
    elif kind == "https":
        client = Client(https_server, event_hooks=_hooks(seen), limits=limits, verify=context)
        expected_transport = httpx.HTTPTransport
    else:
        http = httpx.Client(verify=context)
        client = Client(https_server, http_client=http, event_hooks=_hooks(seen))
        expected_transport = ClientAdapter
    with client:
        assert isinstance(client._pipeline.transport, expected_transport)
        _exercise(client)
        assert seen == EXPECTED
        assert client.infer("mlp", X)["output"].shape == (2, 10)
    if kind == "injected":
        assert not http.is_closed  # injected: the client never closes it
        http.close()


@pytest.mark.parametrize("kind", ["lean", "https", "injected"])
async def test_async_hooks_whatever_the_scheme(
    kind: str, server_url: str, https_server: str, tls: tuple[Path, Path, ssl.SSLContext]
) -> None:
    seen: Recorded = []
    context = tls[2]
    http = None
    if kind == "lean":
        client = AsyncClient(server_url, event_hooks=_async_hooks(seen))
        expected_transport: type = AsyncLeanTransport
    elif kind == "https":
        client = AsyncClient(https_server, event_hooks=_async_hooks(seen), verify=context)
        expected_transport = httpx.AsyncHTTPTransport
    else:
        http = httpx.AsyncClient(verify=context)
        client = AsyncClient(https_server, http_client=http, event_hooks=_async_hooks(seen))
        expected_transport = AsyncClientAdapter
    async with client:
        assert isinstance(client._pipeline.transport, expected_transport)
        assert await client.server.live() is True
        with pytest.raises(Exception, match="404"):
            await client.models.get("nope")
        assert seen == EXPECTED
        assert (await client.infer("mlp", X))["output"].shape == (2, 10)
    if http is not None:
        await http.aclose()


def test_a_request_hook_that_raises_stops_the_call(server_url: str) -> None:
    def refuse(request: httpx.Request) -> None:
        raise RuntimeError("not this one")

    client = Client(server_url, event_hooks={"request": [refuse]})
    with client, pytest.raises(RuntimeError, match="not this one"):
        client.server.live()


def test_call_timeout_applies_over_https(
    https_server: str, tls: tuple[Path, Path, ssl.SSLContext]
) -> None:
    with Client(https_server, verify=tls[2], max_retries=0) as client:
        assert client.server.live(timeout=5.0) is True
        with pytest.raises(APITimeoutError):
            client.infer("mlp", X, deadline=1e-9)
        assert client.server.live() is True


def test_maas_transport_chooses_httpx_for_plain_http(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAAS_TRANSPORT", "httpx")
    with Client("http://127.0.0.1:9", max_retries=0) as client:
        assert isinstance(client._pipeline.transport, httpx.HTTPTransport)
    monkeypatch.setenv("MAAS_TRANSPORT", "lean")
    with Client("http://127.0.0.1:9", max_retries=0) as client:
        assert isinstance(client._pipeline.transport, LeanTransport)
    monkeypatch.setenv("MAAS_TRANSPORT", "fast")
    with pytest.raises(ValueError, match="MAAS_TRANSPORT='fast' is not one of lean, httpx"):
        Client("http://127.0.0.1:9")
