"""Malformed inference requests get a 400 that says what is wrong, never a 500 with an internal
exception's text: header lengths that ``str.isdigit`` accepts but ``int`` does not (``²``) or
that ``int`` refuses to parse (5,000 digits), and shapes no array can have."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from maas_server import Settings
from maas_server.asgi import Message
from maas_wire.codec import HEADER_LENGTH, MAX_DIMS, CodecError, element_count
from tests.server.apps import asgi_app, mlp_request

HEADER_VALUES = ["\u00b2", "1\u00b3", "\u0663", "9" * 5000, "9" * 19, "-1", "+5", "0x10", ""]


def latin1_or_utf8(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


@pytest.mark.parametrize("value", HEADER_VALUES, ids=repr)
async def test_bad_header_lengths_are_400(repository: Path, value: str) -> None:
    request = mlp_request()
    headers = {**request["headers"], HEADER_LENGTH: latin1_or_utf8(value)}
    async with asgi_app(Settings(repository=repository)) as (_, client):
        answer = await client.post(
            "/v2/models/mlp/infer", content=request["content"], headers=headers
        )
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert f"{HEADER_LENGTH} must be a non-negative integer" in error
        assert len(error) < 300 and "int()" not in error
        good = await client.post("/v2/models/mlp/infer", **mlp_request())
        assert good.status_code == 200, good.text


@pytest.mark.parametrize(("value", "expected"), [("\u00b2", 400), ("9" * 5000, 413)])
async def test_odd_content_lengths_are_not_a_500(
    repository: Path, value: str, expected: int
) -> None:
    """``Content-Length: ²`` (not a number: 400) or of 5,000 digits (too large: 413), from an
    ASGI server that passes it on."""
    request = mlp_request()
    body = request["content"]
    headers = [(k.lower().encode(), v.encode()) for k, v in request["headers"].items()]
    headers.append((b"content-length", value.encode("latin-1")))
    sent: list[Message] = []
    async with asgi_app(Settings(repository=repository)) as (app, _):
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/v2/models/mlp/infer", "raw_path": b"/v2/models/mlp/infer",
            "root_path": "", "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1),
            "server": ("maas.test", 80), "state": {},
        }  # fmt: skip

        async def receive() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        await app(scope, receive, send)
    status = sent[0]["status"]
    assert status == expected, sent
    assert b"Content-Length" in sent[1]["body"], sent


SHAPES: list[list[int]] = [
    [2**62, 0],
    [0, 2**62],
    [2**31, 2**31, 0],
    [2**63 - 1, 1],
    [2**63],
    [1] * (MAX_DIMS + 1),
    [0] * 70,
]


def inference(shape: list[int], binary: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": "input", "shape": shape, "datatype": "FP32"}
    if binary:
        entry["parameters"] = {"binary_data_size": 0}
        header = json.dumps({"inputs": [entry]}).encode()
        return {"content": header, "headers": {HEADER_LENGTH: str(len(header))}}
    entry["data"] = []
    return {"json": {"inputs": [entry]}}


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s)}dims-{max(s, default=0)}")
async def test_impossible_shapes_are_400(repository: Path, shape: list[int], binary: bool) -> None:
    async with asgi_app(Settings(repository=repository)) as (_, client):
        answer = await client.post("/v2/models/mlp/infer", **inference(shape, binary))
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert "too large for any tensor" in error or f"at most {MAX_DIMS}" in error, error
        assert "maximum supported dimension" not in error and len(error) < 300
        good = await client.post("/v2/models/mlp/infer", **mlp_request())
        assert good.status_code == 200, good.text


def test_element_count_bounds() -> None:
    assert element_count([]) == 1
    assert element_count([0] * MAX_DIMS) == 0
    assert element_count([2**20, 2**20, 2**18]) == 2**58
    with pytest.raises(CodecError, match="too large"):
        element_count([2**20, 2**20, 2**18, 2])
    with pytest.raises(CodecError, match="65 dimensions"):
        element_count([1] * 65)
