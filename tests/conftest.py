"""Shared fixtures: a model repository built from real ONNX models, and real servers over it.

- ``repository``: a folder with a model per datatype, multi-input, string, scalar, batched MLP,
  versioned, a real pretrained PaddleOCR model from the rapidocr wheel, a corrupt model file and
  a model with a broken configuration.
- ``server``: uvicorn on a free 127.0.0.1 port, serving that repository, for the whole session.
- ``asgi_client``: a fresh app (its own repository state) driven in-process through
  ``httpx.ASGITransport``, for tests that load and unload models.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import onnx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from onnx import TensorProto

from maas_server import Settings, create_app
from tests import models

ELEMENT_TYPES: dict[str, int] = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BF16": TensorProto.BFLOAT16,
    "BYTES": TensorProto.STRING,
}
"""Every protocol datatype and the ONNX element type of its ``identity_<datatype>`` model."""


def ppocr_cls_path() -> Path:
    """PaddleOCR's text-direction classifier, shipped (pretrained) inside the rapidocr wheel."""
    import rapidocr_onnxruntime

    path = Path(rapidocr_onnxruntime.__file__).parent / "models"
    return path / "ch_ppocr_mobile_v2.0_cls_infer.onnx"


def _put(
    root: Path, name: str, model: onnx.ModelProto | bytes, config: Any = None, version: int = 1
) -> None:
    target = root / name / str(version) / "model.onnx"
    if isinstance(model, bytes):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(model)
    else:
        models.save(model, target)
    if config is not None:
        (root / name / "config.json").write_text(json.dumps(config))


def build_repository(root: Path) -> Path:
    """Write the test model repository into ``root``."""
    for datatype, elem_type in ELEMENT_TYPES.items():
        _put(root, f"identity_{datatype.lower()}", models.identity_model(elem_type, ["batch", 3]))
    _put(root, "add", models.add_model(), {"max_batch_size": 8})
    _put(root, "mlp", models.mlp_model(), {"max_batch_size": 64, "warmup": 1})
    _put(root, "strings", models.string_model())
    _put(root, "scalar", models.scalar_model())
    for version in (1, 2, 3):
        _put(root, "versioned", models.mlp_model(seed=version), version=version)
    (root / "versioned" / "config.json").write_text(
        json.dumps({"version_policy": {"latest": {"num_versions": 2}}})
    )
    ppocr = root / "ppocr_cls" / "1"
    ppocr.mkdir(parents=True)
    shutil.copy(ppocr_cls_path(), ppocr / "model.onnx")
    (root / "ppocr_cls" / "config.json").write_text(
        json.dumps({"max_batch_size": 8, "labels": "labels.txt"})
    )
    (root / "ppocr_cls" / "labels.txt").write_text("0\n180\n")
    _put(root, "corrupt", models.corrupt_model_bytes())
    _put(root, "badconfig", models.mlp_model(), {"max_batch_size": 4, "no_such_key": 1})
    return root


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("repository"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RunningServer:
    """A uvicorn server in a background thread; ``url`` is its base URL."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_server(
    settings: Settings, port: int | None = None, **uvicorn_options: Any
) -> RunningServer:
    """Start uvicorn on 127.0.0.1 with the app for ``settings`` and wait until it listens.

    ``uvicorn_options`` go to ``uvicorn.Config`` (``ssl_certfile=...`` makes it an https URL).
    """
    port = port or free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        **uvicorn_options,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    scheme = "https" if uvicorn_options.get("ssl_certfile") else "http"
    return RunningServer(f"{scheme}://127.0.0.1:{port}", server, thread)


@pytest.fixture(scope="session")
def server(repository: Path) -> Iterator[RunningServer]:
    running = start_server(Settings(repository=repository, strict_readiness=False))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def server_url(server: RunningServer) -> str:
    return server.url


@pytest.fixture(scope="session")
def pipeline_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pipeline models (``minilm``, ``minilm_short``, ``ppocr_dir``, ``sentiment``; see
    tests/pipelines.py)."""
    from tests.pipelines import build_pipeline_repository

    return build_pipeline_repository(tmp_path_factory.mktemp("pipelines"))


@pytest.fixture(scope="session")
def pipeline_server(pipeline_repository: Path) -> Iterator[RunningServer]:
    running = start_server(Settings(repository=pipeline_repository))
    yield running
    running.stop()


@pytest.fixture
async def asgi_client(repository: Path) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process server with its own state, and an httpx client wired straight to it."""
    app = create_app(Settings(repository=repository, strict_readiness=False))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://maas.test"
        ) as client,
    ):
        yield client


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it is true, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


__all__ = ["ELEMENT_TYPES", "RunningServer", "asyncio", "build_repository", "start_server"]
