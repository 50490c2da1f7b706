"""Publishing a version as a streamed body: a single .onnx file or a tar/zip of its folder,
validated before it is published; bad uploads are refused with the reason, nothing is published
and the previous version keeps answering."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import pytest

from maas_server import Settings
from tests import models
from tests.server.apps import asgi_app
from tests.server.publishing import (
    assert_serves,
    external_data_folder,
    hostile_tar,
    hostile_zip,
    infer_mlp,
    mlp_bytes,
    publish_repository,
    tar_bytes,
    zip_bytes,
)

ONNX = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return publish_repository(tmp_path / "repo")


def staging_empty(repo: Path) -> bool:
    staging = repo / ".maas" / "staging"
    return not staging.exists() or not any(staging.iterdir())


async def test_put_single_file_publishes_and_serves(repo: Path) -> None:
    body = mlp_bytes(2)
    async with asgi_app(Settings(repository=repo)) as (_, client):
        assert_serves(*await infer_mlp(client), seed=1, expected_version="1")
        answer = await client.put(
            "/v2/repository/models/mlp/versions/2",
            content=body,
            headers={
                **ONNX,
                "X-Content-SHA256": hashlib.sha256(body).hexdigest(),
                "X-Maas-Metadata": json.dumps({"framework": "pytorch", "run": "exp-7"}),
            },
        )
        assert answer.status_code == 201, answer.text
        entry = answer.json()
        assert entry["version"] == "2" and entry["state"] == "READY" and entry["default"]
        assert entry["size"] == len(body)
        assert entry["sha256"] == hashlib.sha256(body).hexdigest()
        assert entry["framework"] == "pytorch" and entry["metadata"] == {"run": "exp-7"}
        assert_serves(*await infer_mlp(client), seed=2, expected_version="2")
    assert (repo / "mlp" / "2" / "model.onnx").read_bytes() == body
    assert (repo / "mlp" / "1" / "model.onnx").is_file()  # kept for a rollback
    assert staging_empty(repo)


async def test_post_takes_the_next_version_number(repo: Path) -> None:
    async with asgi_app(Settings(repository=repo)) as (_, client):
        for expected, seed in (("2", 2), ("3", 3)):
            answer = await client.post(
                "/v2/repository/models/mlp/versions", content=mlp_bytes(seed), headers=ONNX
            )
            assert answer.status_code == 201, answer.text
            assert answer.json()["version"] == expected
            assert_serves(*await infer_mlp(client), seed=seed, expected_version=expected)
        conflict = await client.put(
            "/v2/repository/models/mlp/versions/3", content=mlp_bytes(4), headers=ONNX
        )
        assert conflict.status_code == 409, conflict.text
        assert_serves(*await infer_mlp(client), seed=3, expected_version="3")


async def _stream(data: bytes, size: int = 7000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("kind", ["tar.gz", "tar", "zip"])
async def test_archive_of_a_folder_with_external_data_and_config(
    repo: Path, tmp_path: Path, kind: str
) -> None:
    folder = external_data_folder(tmp_path / "version", seed=5)
    (folder / "config.json").write_text(json.dumps({"max_batch_size": 8}))
    (folder / "tokenizer.json").write_text("{}")
    if kind == "zip":
        body = zip_bytes(folder, prefix="my_model/")
    else:
        body = tar_bytes(folder, gz=kind == "tar.gz")
    async with asgi_app(Settings(repository=repo), models=()) as (_, client):
        # a new model, chunked (no Content-Length)
        answer = await client.post("/v2/repository/models/fresh/versions", content=_stream(body))
        assert answer.status_code == 201, answer.text
        assert answer.json()["version"] == "1"
        assert_serves(*await infer_mlp(client, "fresh"), seed=5, expected_version="1")
        config = (await client.get("/v2/models/fresh/config")).json()
        assert config["max_batch_size"] == 8
    assert (repo / "fresh" / "1" / "weights.bin").is_file()
    assert (repo / "fresh" / "1" / "tokenizer.json").is_file()
    assert json.loads((repo / "fresh" / "config.json").read_text()) == {"max_batch_size": 8}
    assert staging_empty(repo)


async def _refused(
    client: Any, repo: Path, body: bytes, status: int, reason: str, **headers: str
) -> None:
    answer = await client.put(
        "/v2/repository/models/mlp/versions/2", content=body, headers={**ONNX, **headers}
    )
    assert answer.status_code == status, answer.text
    assert reason in answer.json()["error"]
    assert not (repo / "mlp" / "2").exists()
    assert staging_empty(repo)
    assert_serves(*await infer_mlp(client), seed=1, expected_version="1")
    listed = (await client.get("/v2/repository/models/mlp/versions")).json()
    assert [v["version"] for v in listed["versions"]] == ["1"]
    assert reason in listed["failed_attempts"][0]["reason"]
    assert listed["failed_attempts"][0]["status"] == status


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "device", "fifo"])
async def test_tar_members_that_would_leave_the_folder_are_refused(repo: Path, kind: str) -> None:
    reason = {
        "dotdot": "would leave the version folder",
        "absolute": "absolute path",
        "symlink": "is a link",
        "hardlink": "is a link",
        "device": "not a regular file",
        "fifo": "not a regular file",
    }[kind]
    async with asgi_app(Settings(repository=repo)) as (_, client):
        await _refused(client, repo, hostile_tar(kind), 400, reason)
    assert not (repo / "escaped.txt").exists() and not (repo / "mlp" / "escaped.txt").exists()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
async def test_zip_members_that_would_leave_the_folder_are_refused(repo: Path, kind: str) -> None:
    reason = {
        "dotdot": "would leave the version folder",
        "absolute": "absolute path",
        "symlink": "is a link",
    }[kind]
    async with asgi_app(Settings(repository=repo)) as (_, client):
        await _refused(client, repo, hostile_zip(kind), 400, reason)


def _unloadable_graph() -> bytes:
    """A well-formed ONNX file whose operator ONNX Runtime does not have."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("NoSuchOperator", ["input"], ["output"], domain="maas.test")],
        "unloadable",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 64])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("maas.test", 1)],
        ir_version=8,
    )
    data: bytes = model.SerializeToString()
    return data


async def test_bad_models_are_refused_and_the_previous_version_answers(repo: Path) -> None:
    async with asgi_app(Settings(repository=repo)) as (_, client):
        await _refused(client, repo, models.corrupt_model_bytes(), 400, "does not load")
        await _refused(client, repo, _unloadable_graph(), 400, "NoSuchOperator")
        await _refused(
            client,
            repo,
            mlp_bytes(2),
            400,
            "configuration names unknown input(s): nope",
            **{"X-Maas-Config": json.dumps({"inputs": [{"name": "nope", "shape": [-1, 3]}]})},
        )
        await _refused(
            client,
            repo,
            mlp_bytes(2),
            400,
            "checksum mismatch",
            **{"X-Content-SHA256": "0" * 64},
        )
        await _refused(client, repo, b"", 400, "the upload is empty")
        # and a good upload still works afterwards
        good = await client.put(
            "/v2/repository/models/mlp/versions/2", content=mlp_bytes(2), headers=ONNX
        )
        assert good.status_code == 201, good.text
        assert_serves(*await infer_mlp(client), seed=2, expected_version="2")


async def test_uploads_over_the_limit_are_413(repo: Path) -> None:
    body = mlp_bytes(2)
    settings = Settings(repository=repo, max_upload_bytes=len(body) - 1)
    async with asgi_app(settings) as (_, client):
        await _refused(client, repo, body, 413, "exceeds the limit")
        chunked = await client.put("/v2/repository/models/mlp/versions/2", content=_stream(body))
        assert chunked.status_code == 413, chunked.text
        assert staging_empty(repo) and not (repo / "mlp" / "2").exists()


async def test_an_archive_that_unpacks_over_the_limit_is_413(repo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bomb"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(mlp_bytes(2))
    (folder / "zeros.bin").write_bytes(bytes(4 * 1024 * 1024))
    body = tar_bytes(folder)
    assert len(body) < 1024 * 1024
    async with asgi_app(Settings(repository=repo, max_upload_bytes=1024 * 1024)) as (_, client):
        await _refused(client, repo, body, 413, "unpacks to more than the upload limit")


class _DiskFull:
    """A writer that fills up after ``room`` bytes, as a full disk does."""

    def __init__(self, room: int) -> None:
        self.room = room

    def __call__(self, out: IO[bytes], data: bytes) -> None:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        out.write(data)


@pytest.mark.parametrize("room", [0, 3 * 1024 * 1024 // 2])
async def test_a_full_disk_is_507_and_leaves_nothing(repo: Path, tmp_path: Path, room: int) -> None:
    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(mlp_bytes(2))
    (folder / "padding.bin").write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    body = tar_bytes(folder, gz=False)
    async with asgi_app(Settings(repository=repo)) as (app, client):
        # room 0: the body's first write fails; 1.5 MiB: unpacking the archive fails
        app.state.publisher.write = _DiskFull(room if room == 0 else len(body) + room)
        await _refused(client, repo, body, 507, "disk is full")
        app.state.publisher.write = _DiskFull(1 << 40)
        good = await client.put(
            "/v2/repository/models/mlp/versions/2", content=mlp_bytes(2), headers=ONNX
        )
        assert good.status_code == 201, good.text


async def test_bad_requests(repo: Path) -> None:
    async with asgi_app(Settings(repository=repo)) as (_, client):
        for path, headers, reason in (
            ("/v2/repository/models/mlp/versions/x", ONNX, "versions are integers"),
            ("/v2/repository/models/..bad/versions/2", ONNX, "invalid model name"),
            (
                "/v2/repository/models/mlp/versions/2",
                {"X-Maas-Metadata": "[1]"},
                "must be a JSON object",
            ),
            (
                "/v2/repository/models/mlp/versions/2",
                {"X-Content-SHA256": "abc"},
                "64 hexadecimal digits",
            ),
            ("/v2/repository/models/mlp/versions/2?default=maybe", ONNX, "true or false"),
        ):
            answer = await client.put(path, content=mlp_bytes(2), headers=headers)
            assert answer.status_code == 400, answer.text
            assert reason in answer.json()["error"]
        gz = await client.put(
            "/v2/repository/models/mlp/versions/2",
            content=mlp_bytes(2),
            headers={"Content-Encoding": "gzip"},
        )
        assert gz.status_code == 415
        assert_serves(*await infer_mlp(client), seed=1, expected_version="1")


def test_an_interrupted_upload_publishes_nothing(repo: Path) -> None:
    """The client goes away in the middle of the body (a real socket to a real server)."""
    import socket
    from urllib.parse import urlsplit

    import httpx

    from tests.conftest import start_server, wait_for

    running = start_server(Settings(repository=repo))
    try:
        url = urlsplit(running.url)
        body = mlp_bytes(2)
        with socket.create_connection((url.hostname, url.port)) as sock:
            sock.sendall(
                b"PUT /v2/repository/models/mlp/versions/2 HTTP/1.1\r\nHost: maas\r\n"
                b"Content-Type: application/octet-stream\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body[: len(body) // 3]
            )

        def attempts() -> list[dict[str, Any]]:
            listed = httpx.get(f"{running.url}/v2/repository/models/mlp/versions").json()
            found: list[dict[str, Any]] = listed["failed_attempts"]
            return found

        wait_for(lambda: bool(attempts()))
        assert "upload interrupted" in attempts()[0]["reason"]
        wait_for(lambda: staging_empty(repo))
        assert not (repo / "mlp" / "2").exists()
        answer = httpx.post(
            f"{running.url}/v2/models/mlp/infer",
            json={
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}
                ]
            },
        )
        assert answer.status_code == 200 and answer.json()["model_version"] == "1"
    finally:
        running.stop()


async def test_an_upload_past_the_request_deadline_is_504_and_publishes_nothing(
    repo: Path,
) -> None:
    never = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield mlp_bytes(2)[:1000]
        await never.wait()  # the client stops sending; the server's deadline ends it
        yield b""

    async with asgi_app(Settings(repository=repo, request_timeout_s=0.5)) as (_, client):
        answer = await client.put("/v2/repository/models/mlp/versions/2", content=stalled())
        assert answer.status_code == 504, answer.text
        assert staging_empty(repo) and not (repo / "mlp" / "2").exists()
        listed = (await client.get("/v2/repository/models/mlp/versions")).json()
        assert listed["failed_attempts"][0]["status"] == 504
        assert_serves(*await infer_mlp(client), seed=1, expected_version="1")
