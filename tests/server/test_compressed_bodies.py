"""Compressed request bodies: every member of a gzip body is decoded (none is dropped after the
first), data after a deflate stream is refused, and the size limit covers all members."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import numpy as np

from maas_server import Settings
from tests.server.apps import asgi_app, mlp_request

ROWS = [[float(i % 7) for i in range(64)], [1.0] * 64]


def body(rows: list[list[float]]) -> bytes:
    tensor = {"name": "input", "shape": [len(rows), 64], "datatype": "FP32", "data": rows}
    return json.dumps({"inputs": [tensor]}).encode()


def outputs(answer_json: dict[str, object]) -> np.ndarray:
    (output,) = answer_json["outputs"]  # type: ignore[misc]
    return np.array(output["data"]).reshape(output["shape"])


async def test_every_gzip_member_is_decoded(repository: Path) -> None:
    plain = body(ROWS)
    half = len(plain) // 2
    two_members = gzip.compress(plain[:half]) + gzip.compress(plain[half:])
    async with asgi_app(Settings(repository=repository)) as (_, client):
        expected = await client.post("/v2/models/mlp/infer", content=plain)
        assert expected.status_code == 200, expected.text
        answer = await client.post(
            "/v2/models/mlp/infer", content=two_members, headers={"Content-Encoding": "gzip"}
        )
        assert answer.status_code == 200, answer.text
        np.testing.assert_array_equal(outputs(answer.json()), outputs(expected.json()))
        # Nothing after the first member is dropped: a second member that spoils the JSON is
        # seen (before, the first member alone was served and the rest silently ignored).
        spoiled = gzip.compress(plain) + gzip.compress(b"garbage")
        answer = await client.post(
            "/v2/models/mlp/infer", content=spoiled, headers={"Content-Encoding": "gzip"}
        )
        assert answer.status_code == 400, answer.text
        assert "not valid JSON" in answer.json()["error"]
        # Trailing bytes that are not a gzip member are refused too.
        answer = await client.post(
            "/v2/models/mlp/infer",
            content=gzip.compress(plain) + b"\x00\x01",
            headers={"Content-Encoding": "gzip"},
        )
        assert answer.status_code == 400, answer.text
        # A single member still works, binary framing included.
        request = mlp_request()
        answer = await client.post(
            "/v2/models/mlp/infer",
            content=gzip.compress(request["content"]),
            headers={**request["headers"], "Content-Encoding": "gzip"},
        )
        assert answer.status_code == 200, answer.text


async def test_data_after_a_deflate_stream_is_refused(repository: Path) -> None:
    plain = body(ROWS)
    async with asgi_app(Settings(repository=repository)) as (_, client):
        answer = await client.post(
            "/v2/models/mlp/infer",
            content=zlib.compress(plain) + zlib.compress(b"more"),
            headers={"Content-Encoding": "deflate"},
        )
        assert answer.status_code == 400, answer.text
        assert "after the end of its deflate stream" in answer.json()["error"]
        answer = await client.post(
            "/v2/models/mlp/infer",
            content=zlib.compress(plain),
            headers={"Content-Encoding": "deflate"},
        )
        assert answer.status_code == 200, answer.text


async def test_the_size_limit_covers_every_member(repository: Path) -> None:
    plain = body(ROWS)
    limit = len(plain) + 100
    members = gzip.compress(plain) + gzip.compress(b" " * 200)  # whitespace: valid JSON after
    async with asgi_app(Settings(repository=repository, max_body_bytes=limit)) as (_, client):
        answer = await client.post(
            "/v2/models/mlp/infer", content=members, headers={"Content-Encoding": "gzip"}
        )
        assert answer.status_code == 413, answer.text
        fits = gzip.compress(plain) + gzip.compress(b" " * 50)
        answer = await client.post(
            "/v2/models/mlp/infer", content=fits, headers={"Content-Encoding": "gzip"}
        )
        assert answer.status_code == 200, answer.text


async def test_too_many_members_are_refused(repository: Path) -> None:
    empty = gzip.compress(b"")
    async with asgi_app(Settings(repository=repository)) as (_, client):
        answer = await client.post(
            "/v2/models/mlp/infer",
            content=gzip.compress(body(ROWS)) + empty * 1100,
            headers={"Content-Encoding": "gzip"},
        )
        assert answer.status_code == 400, answer.text
        assert "more than 1024 gzip members" in answer.json()["error"]
