"""One object per model version: replacing or unloading a version closes it (sessions released,
threads joined, engine stopped) once its requests in flight are done, with no garbage collection."""

from __future__ import annotations

import asyncio
import gc
import shutil
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from maas_server.generation import GenerationService
from maas_server.model_version import ModelVersion
from maas_server.repository import ModelRepository
from tests import models
from tests.server.conftest import TINY_GPT
from tests.server.test_repository import put


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Only reference counting may free what a closed version held."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def wait_until(condition: Callable[[], bool], timeout_s: float = 1.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes (the server's own state)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return condition()
        time.sleep(0.005)
    return True


def threads_of(name: str, before: frozenset[threading.Thread] = frozenset()) -> list[str]:
    """The names of the threads serving model ``name``, less those in ``before`` (threads that
    other tests' servers of a model of the same name may still be closing)."""
    return [t.name for t in threading.enumerate() if f"-{name}-" in t.name and t not in before]


def mlp_feeds() -> dict[str, np.ndarray[Any, Any]]:
    return {"input": np.full((1, 64), 0.25, dtype=np.float32)}


def test_unload_releases_sessions_and_threads_without_gc(tmp_path: Path, no_gc: None) -> None:
    put(tmp_path, "closeme", models.mlp_model(), {"instance_count": 2})
    repo = ModelRepository(tmp_path)
    status = repo.load("closeme").versions[1]
    assert status.model is not None
    model = status.model
    del status
    asyncio.run(model.scheduler.infer(mlp_feeds(), ["output"]))  # starts a pool thread
    assert threads_of("closeme"), threading.enumerate()
    session_refs = [weakref.ref(s) for s in model.onnx.sessions]
    assert len(session_refs) == 2
    version_ref = weakref.ref(model)
    del model

    repo.unload("closeme")

    assert wait_until(lambda: all(r() is None for r in session_refs)), "sessions still held"
    assert wait_until(lambda: not threads_of("closeme")), threads_of("closeme")
    assert version_ref() is None, gc.get_referrers(version_ref())
    # a good model loaded again serves
    again = repo.load("closeme").versions[1].model
    assert again is not None
    result = asyncio.run(again.scheduler.infer(mlp_feeds(), ["output"]))
    assert result["output"].shape == (1, 10)


async def test_reload_drains_in_flight_requests_then_closes(tmp_path: Path, no_gc: None) -> None:
    put(tmp_path, "drain", models.mlp_model())
    repo = ModelRepository(tmp_path)
    repo.load("drain")
    old = repo.get("drain")
    entered, gate = threading.Event(), threading.Event()
    original = old.onnx.run_sync

    def gated(feeds: dict[str, Any], names: list[str]) -> dict[str, Any]:
        entered.set()
        gate.wait(10)
        return original(feeds, names)

    old.onnx.run_sync = gated  # type: ignore[method-assign,assignment]
    in_flight = asyncio.create_task(old.scheduler.infer(mlp_feeds(), ["output"]))
    assert await asyncio.to_thread(entered.wait, 10)
    session_refs = [weakref.ref(s) for s in old.onnx.sessions]
    old_threads = [t for t in threading.enumerate() if "-drain-" in t.name]
    assert old_threads

    await asyncio.to_thread(repo.load, "drain")

    new = repo.get("drain")
    assert new is not old
    assert not old.closed  # its request is still running
    assert (await new.scheduler.infer(mlp_feeds(), ["output"]))["output"].shape == (1, 10)
    gate.set()
    result = await in_flight
    assert result["output"].shape == (1, 10)
    assert await asyncio.to_thread(old.wait_closed, 1.0)
    assert all(r() is None for r in session_refs)
    assert await asyncio.to_thread(wait_until, lambda: not any(t.is_alive() for t in old_threads))


async def test_a_closed_version_refuses_new_requests_with_503(tmp_path: Path) -> None:
    put(tmp_path, "gone", models.mlp_model())
    repo = ModelRepository(tmp_path)
    repo.load("gone")
    old = repo.get("gone")
    await asyncio.to_thread(repo.unload, "gone")
    assert await asyncio.to_thread(old.wait_closed, 1.0)
    from maas_server.errors import ModelUnavailableError

    with pytest.raises(ModelUnavailableError, match="unloaded or replaced"):
        await old.scheduler.infer(mlp_feeds(), ["output"])


async def test_unload_stops_the_generation_engine(tmp_path: Path, no_gc: None) -> None:
    shutil.copytree(TINY_GPT, tmp_path / "tiny_gpt")
    before = frozenset(threading.enumerate())
    repo = ModelRepository(tmp_path)
    repo.load("tiny_gpt")
    service = GenerationService(repo)
    engine = service.engine("tiny_gpt", None)
    async with engine.submit(engine.encode("Copyright"), engine.params({"max_tokens": 4})) as s:
        result = await s.collect()
    assert result.completion_tokens == 4
    version: ModelVersion = repo.get("tiny_gpt")
    assert version.engine is engine
    assert [n for n in threads_of("tiny_gpt", before) if n.startswith("maas-generate")]
    session_refs = [weakref.ref(s) for s in version.onnx.sessions]
    del version

    await asyncio.to_thread(repo.unload, "tiny_gpt")

    assert await asyncio.to_thread(wait_until, lambda: not threads_of("tiny_gpt", before)), (
        threads_of("tiny_gpt", before)
    )
    assert all(r() is None for r in session_refs)
