"""HTTPS and mutual TLS against a real uvicorn, with a CA and certificates made at test time."""

from __future__ import annotations

import ssl
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from typer.testing import CliRunner

from maas_cli import app as cli_app
from maas_cli.serve import TLS_MINIMUM_VERSION, tls_floor
from maas_client import AsyncClient, Client
from maas_server import Settings
from tests.conftest import RunningServer, start_server
from tests.server.apps import mlp_request


@dataclass
class Certificates:
    ca: trustme.CA
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate from another CA
    stranger_key: Path


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(folder / "ca.pem")
    server = ca.issue_cert("127.0.0.1", "localhost")
    (folder / "server.pem").write_bytes(b"".join(p.bytes() for p in server.cert_chain_pems))
    server.private_key_pem.write_to_path(folder / "server.key")
    client = ca.issue_cert("ci@maas.test")
    client.cert_chain_pems[0].write_to_path(folder / "client.pem")
    client.private_key_pem.write_to_path(folder / "client.key")
    stranger = trustme.CA().issue_cert("stranger@maas.test")
    stranger.cert_chain_pems[0].write_to_path(folder / "stranger.pem")
    stranger.private_key_pem.write_to_path(folder / "stranger.key")
    return Certificates(
        ca,
        folder / "ca.pem",
        folder / "server.pem",
        folder / "server.key",
        folder / "client.pem",
        folder / "client.key",
        folder / "stranger.pem",
        folder / "stranger.key",
    )


def client_context(
    certs: Certificates, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """What ``verify=`` takes: trust the test CA, and present ``cert`` when given."""
    context = ssl.create_default_context(cafile=str(certs.ca_file))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


@pytest.fixture(scope="module")
def https_server(repository: Path, certificates: Certificates) -> Iterator[RunningServer]:
    running = start_server(
        Settings(repository=repository, strict_readiness=False),
        ssl_certfile=str(certificates.server_cert),
        ssl_keyfile=str(certificates.server_key),
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def mtls_server(repository: Path, certificates: Certificates) -> Iterator[RunningServer]:
    running = start_server(
        Settings(repository=repository, strict_readiness=False),
        ssl_certfile=str(certificates.server_cert),
        ssl_keyfile=str(certificates.server_key),
        ssl_ca_certs=str(certificates.ca_file),
        ssl_cert_reqs=ssl.CERT_REQUIRED,
    )
    yield running
    running.stop()


def test_https_with_the_ca_trusted(https_server: RunningServer, certificates: Certificates) -> None:
    assert https_server.url.startswith("https://")
    with httpx.Client(base_url=https_server.url, verify=client_context(certificates)) as client:
        assert client.get("/v2/health/ready").status_code == 200
        answer = client.post("/v2/models/mlp/infer", **mlp_request())
        assert answer.status_code == 200


def test_https_refused_without_trusting_the_ca(https_server: RunningServer) -> None:
    with (
        httpx.Client(base_url=https_server.url, verify=ssl.create_default_context()) as client,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        client.get("/v2/health/live")
    plain = https_server.url.replace("https://", "http://")
    with httpx.Client(base_url=plain) as client, pytest.raises(httpx.TransportError):
        client.get("/v2/health/live")


def test_maas_client_over_https(https_server: RunningServer, certificates: Certificates) -> None:
    with (
        httpx.Client(verify=client_context(certificates)) as http,
        Client(https_server.url, http_client=http) as client,
    ):
        assert client.server.live() is True
        assert client.models.get("mlp").name == "mlp"


async def test_async_maas_client_over_https(
    https_server: RunningServer, certificates: Certificates
) -> None:
    async with httpx.AsyncClient(verify=client_context(certificates)) as http:
        client = AsyncClient(https_server.url, http_client=http)
        assert await client.server.ready() is True
        await client.close()


def test_mutual_tls_accepts_a_client_certificate_of_the_ca(
    mtls_server: RunningServer, certificates: Certificates
) -> None:
    context = client_context(certificates, certificates.client_cert, certificates.client_key)
    with httpx.Client(base_url=mtls_server.url, verify=context) as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.post("/v2/models/mlp/infer", **mlp_request()).status_code == 200
    with httpx.Client(verify=context) as http, Client(mtls_server.url, http_client=http) as maas:
        assert maas.server.live() is True


@pytest.mark.parametrize("who", ["nobody", "stranger"])
def test_mutual_tls_refuses_clients_without_a_good_certificate(
    mtls_server: RunningServer, certificates: Certificates, who: str
) -> None:
    if who == "nobody":
        context = client_context(certificates)
    else:
        context = client_context(
            certificates, certificates.stranger_cert, certificates.stranger_key
        )
    with (
        httpx.Client(base_url=mtls_server.url, verify=context) as client,
        pytest.raises(httpx.TransportError),
    ):
        client.get("/v2/health/live")
    # The server still serves those who have one.
    good = client_context(certificates, certificates.client_cert, certificates.client_key)
    with httpx.Client(base_url=mtls_server.url, verify=good) as client:
        assert client.get("/v2/health/live").status_code == 200


# --- the TLS floor of maas serve ---------------------------------------------------------------


def test_maas_serve_sets_its_own_tls_floor(
    monkeypatch: pytest.MonkeyPatch, certificates: Certificates, tmp_path: Path
) -> None:
    """Whatever context uvicorn builds (an older uvicorn or Python left TLS 1.0 on), the one
    ``maas serve`` listens with refuses TLS before 1.2."""
    import uvicorn
    import uvicorn.config

    made = uvicorn.config.create_ssl_context

    def permissive(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        context = made(*args, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0 is, indeed
            context.minimum_version = ssl.TLSVersion.TLSv1
        return context

    served: list[ssl.SSLContext | None] = []

    def run(self: uvicorn.Server, sockets: Any = None) -> None:
        served.append(self.config.ssl)
        self.started = True  # as if it had served and stopped

    monkeypatch.setattr(uvicorn.config, "create_ssl_context", permissive)
    monkeypatch.setattr(uvicorn.Server, "run", run)
    (tmp_path / "models").mkdir()
    result = CliRunner().invoke(
        cli_app,
        ["serve", str(tmp_path / "models"), "--access-log", "off",
         "--ssl-certfile", str(certificates.server_cert),
         "--ssl-keyfile", str(certificates.server_key)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (context,) = served
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2 == TLS_MINIMUM_VERSION
    # A context that already asks for more keeps it.
    strict = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    strict.minimum_version = ssl.TLSVersion.TLSv1_3
    assert tls_floor(strict).minimum_version == ssl.TLSVersion.TLSv1_3
