"""Limits on requests (body, tensor elements, BYTES elements, headers, deadline), CORS, and
requests that try to reach files outside the model repository."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

from maas_client.codec import HEADER_LENGTH
from maas_client.protocol import TensorPayload, encode_request
from maas_server import Settings
from maas_server.asgi import Message, Receive, Scope, Send
from maas_server.guard import RequestGuard
from maas_server.stats import Rejections
from tests import models
from tests.server.apps import asgi_app, bearer, mlp_request


def strings_request(*elements: bytes, binary: bool) -> dict[str, Any]:
    array = np.array(list(elements), dtype=object)
    body = encode_request([TensorPayload("text", array, "BYTES", binary)])
    headers = {HEADER_LENGTH: str(body.header_length)} if body.header_length is not None else {}
    return {"content": bytes(body.content), "headers": headers}


async def test_body_size_limit(repository: Path) -> None:
    async with asgi_app(Settings(repository=repository, max_body_bytes=1000)) as (app, client):
        assert (await client.post("/v2/models/mlp/infer", **mlp_request(1))).status_code == 200
        refused = await client.post("/v2/models/mlp/infer", **mlp_request(8))
        assert refused.status_code == 413
        assert "limit of 1000 bytes" in refused.json()["error"]
        assert app.state.rejections.snapshot() == {"payload_too_large": 1}


async def test_tensor_element_limit(repository: Path) -> None:
    settings = Settings(repository=repository, max_tensor_elements=128)
    async with asgi_app(settings) as (_, client):
        for binary in (True, False):
            ok = await client.post("/v2/models/mlp/infer", **mlp_request(2, binary=binary))
            assert ok.status_code == 200
            refused = await client.post("/v2/models/mlp/infer", **mlp_request(3, binary=binary))
            assert refused.status_code == 413
            assert "192 elements; the server's limit is 128" in refused.json()["error"]


async def test_bytes_element_limit(repository: Path) -> None:
    settings = Settings(repository=repository, max_bytes_element_size=10)
    async with asgi_app(settings, models=("strings",)) as (_, client):
        for binary in (True, False):
            ok = await client.post(
                "/v2/models/strings/infer", **strings_request(b"a" * 10, b"b", binary=binary)
            )
            assert ok.status_code == 200, ok.text
            refused = await client.post(
                "/v2/models/strings/infer", **strings_request(b"a", b"b" * 11, binary=binary)
            )
            assert refused.status_code == 413
            assert "BYTES element of 11 bytes" in refused.json()["error"]


async def test_header_size_limit(repository: Path) -> None:
    settings = Settings(repository=repository, max_header_bytes=1024)
    async with asgi_app(settings) as (app, client):
        assert (await client.get("/v2", headers={"X-Note": "x" * 500})).status_code == 200
        refused = await client.get("/v2", headers={"X-Note": "x" * 1100})
        assert refused.status_code == 431
        assert "limit of 1024 bytes" in refused.json()["error"]
        assert app.state.rejections.snapshot() == {"headers_too_large": 1}


async def test_request_deadline(repository: Path) -> None:
    settings = Settings(repository=repository, request_timeout_s=0.3)
    rest_of_body = asyncio.Event()  # set once the answer is in: only the deadline can end it

    async def slow_body() -> AsyncIterator[bytes]:
        request = mlp_request()
        yield request["content"][:10]
        await rest_of_body.wait()
        yield request["content"][10:]

    async with asgi_app(settings) as (app, client):
        headers = mlp_request()["headers"]
        try:
            answer = await asyncio.wait_for(
                client.post("/v2/models/mlp/infer", content=slow_body(), headers=headers), 5
            )
        finally:
            rest_of_body.set()
        assert answer.status_code == 504
        assert "deadline of 0.3 s" in answer.json()["error"]
        assert app.state.rejections.snapshot() == {"deadline_exceeded": 1}
        # The server goes on answering.
        assert (await client.post("/v2/models/mlp/infer", **mlp_request())).status_code == 200


async def test_deadline_does_not_cut_an_answer_that_has_started() -> None:
    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.2)
        await send({"type": "http.response.body", "body": b"late", "more_body": False})

    rejections = Rejections()
    middleware = RequestGuard(streaming, timeout_s=0.05, rejections=rejections)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    await middleware({"type": "http", "headers": [], "path": "/"}, receive, send)
    assert [m.get("status") or m.get("body") for m in sent] == [200, b"late"]
    assert rejections.snapshot() == {}


async def test_cors_is_off_unless_origins_are_listed(repository: Path) -> None:
    preflight = {
        "Origin": "https://ui.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with asgi_app(Settings(repository=repository)) as (_, client):
        answer = await client.options("/v2/models/mlp/infer", headers=preflight)
        assert "access-control-allow-origin" not in answer.headers
        simple = await client.get("/v2", headers={"Origin": "https://ui.example"})
        assert "access-control-allow-origin" not in simple.headers

    settings = Settings(
        repository=repository, cors_origins=("https://ui.example",), admin_api_key="k"
    )
    async with asgi_app(settings) as (_, client):
        # Preflights carry no key: they are answered before access control.
        answer = await client.options("/v2/models/mlp/infer", headers=preflight)
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "https://ui.example"
        assert "POST" in answer.headers["access-control-allow-methods"]
        other = await client.options(
            "/v2/models/mlp/infer", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers
        simple = await client.get("/v2", headers=bearer("k", Origin="https://ui.example"))
        assert simple.status_code == 200
        assert simple.headers["access-control-allow-origin"] == "https://ui.example"
        assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
        assert (
            await client.get("/v2", headers={"Origin": "https://ui.example"})
        ).status_code == 401


# --- paths that try to leave the repository ------------------------------------------------------


def raw_request(url: str, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """A request whose path goes on the wire byte for byte (no client-side normalization)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


TRAVERSALS = [
    ("GET", "/v2/models/..%2F..%2F..%2Fetc%2Fpasswd/config"),
    ("GET", "/v2/models/%2e%2e/config"),
    ("GET", "/v2/models/..%5C..%5Cwindows/config"),
    ("GET", "/v2/models/%2Fetc%2Fpasswd"),
    ("GET", "/v2/models/mlp%00/config"),
    ("GET", "/v2/models/%00"),
    ("GET", "/v2/models/mlp/versions/..%2F1/config"),
    ("GET", "/v2/models/mlp/versions/%2e%2e/config"),
    ("GET", "/v2/models/mlp/versions/1%00/ready"),
    ("GET", "/v2/models/mlp/versions/-1/stats"),
    ("GET", "/v2/models/../../etc/passwd"),
    ("POST", "/v2/models/%2e%2e/infer"),
    ("POST", "/v2/repository/models/..%2F..%2Ftmp/load"),
    ("POST", "/v2/repository/models/%2e%2e/load"),
    ("POST", "/v2/repository/models/%2Fetc/load"),
    ("POST", "/v2/repository/models/.hidden/unload"),
    ("POST", "/v2/repository/models/mlp%00x/load"),
]


@pytest.mark.parametrize(("method", "path"), TRAVERSALS)
def test_traversal_in_paths_is_refused(server_url: str, method: str, path: str) -> None:
    status, body = raw_request(server_url, method, path)
    assert status in (400, 404, 405), (status, body)
    assert b"root:" not in body
    assert raw_request(server_url, "GET", "/v2/health/live")[0] == 200


@pytest.fixture
def outside_repository(tmp_path: Path) -> dict[str, Path]:
    """A repository whose links point outside it, and the outside files they point at."""
    repo = tmp_path / "repo"
    outside = tmp_path / "outside"
    models.save(models.mlp_model(), outside / "stolen" / "1" / "model.onnx")
    (outside / "secret.txt").write_text("secret-label\n")
    models.save(models.mlp_model(), repo / "mlp" / "1" / "model.onnx")
    # A model folder that is a link to a folder outside the repository.
    os.symlink(outside / "stolen", repo / "linked_model")
    # A model whose version file is a link to a file outside.
    (repo / "linked_file" / "1").mkdir(parents=True)
    os.symlink(outside / "stolen" / "1" / "model.onnx", repo / "linked_file" / "1" / "model.onnx")
    # A model whose labels file is a link to a file outside.
    shutil.copytree(repo / "mlp", repo / "linked_labels")
    os.symlink(outside / "secret.txt", repo / "linked_labels" / "labels.txt")
    (repo / "linked_labels" / "config.json").write_text(json.dumps({"labels": "labels.txt"}))
    return {"repo": repo, "outside": outside}


async def test_links_out_of_the_repository_are_not_followed(
    outside_repository: dict[str, Path],
) -> None:
    settings = Settings(repository=outside_repository["repo"], strict_readiness=False)
    async with asgi_app(settings, models=()) as (_, client):
        index = (await client.post("/v2/repository/index")).json()
        assert "linked_model" not in {row["name"] for row in index}
        answer = await client.post("/v2/repository/models/linked_model/load")
        assert answer.status_code == 404
        answer = await client.post("/v2/repository/models/linked_file/load")
        assert answer.status_code == 400
        assert "outside the model repository" in answer.json()["error"]
        answer = await client.post("/v2/repository/models/linked_labels/load")
        assert answer.status_code == 400
        assert "outside the model's folder" in answer.json()["error"]
        assert (await client.get("/v2/models/linked_labels/config")).status_code == 503


@pytest.mark.parametrize(
    "labels",
    ["../../outside/secret.txt", "/etc/passwd", "labels\u0000.txt", "sub/../../x.txt"],
)
async def test_config_overrides_cannot_name_files_outside(
    outside_repository: dict[str, Path], labels: str
) -> None:
    settings = Settings(repository=outside_repository["repo"], strict_readiness=False)
    async with asgi_app(settings, models=()) as (_, client):
        override = json.dumps({"labels": labels})
        answer = await client.post(
            "/v2/repository/models/mlp/load", json={"parameters": {"config": override}}
        )
        assert answer.status_code == 400
        assert "labels" in answer.json()["error"]
        ok = await client.post("/v2/repository/models/mlp/load")
        assert ok.status_code == 200
