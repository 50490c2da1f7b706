"""``model_control="poll"``: files written into the repository of a running server load and
unload as Triton's poll mode does; a file still being copied is not loaded, and a version that
fails to load leaves the serving one in place. Each step waits on the server's own state (the
repository index, the poller's count of looks) with a deadline."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager

from maas_server import Settings, create_app
from tests import models
from tests.server.publishing import assert_serves, infer_mlp, mlp_bytes, publish_repository


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_poll_mode_follows_the_repository(tmp_path: Path) -> None:
    repo = publish_repository(tmp_path / "repo")
    app = create_app(Settings(repository=repo, model_control="poll", poll_interval_s=0.05))
    poller = app.state.poller
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://maas.test"
        ) as client,
    ):

        async def index() -> dict[tuple[str, str], dict[str, Any]]:
            rows = (await client.post("/v2/repository/index")).json()
            return {(r["name"], r.get("version", "")): r for r in rows}

        async def polled(count: int) -> None:
            target = poller.polls + count
            await until(lambda: _true(poller.polls >= target))

        assert_serves(*await infer_mlp(client), seed=1, expected_version="1")

        # a copy in progress: it grows between any two looks, so it is never loaded
        data = mlp_bytes(2)
        (repo / "mlp" / "2").mkdir()
        path = repo / "mlp" / "2" / "model.onnx"
        step = len(data) // 6
        with path.open("wb") as out:
            for start in range(0, len(data) - step, step):
                out.write(data[start : start + step])
                out.flush()
                await polled(1)
                rows = await index()
                assert ("mlp", "2") not in rows and rows[("mlp", "1")]["reason"] == ""
            out.write(data[start + step :])
        await until(lambda: _has(index, ("mlp", "2"), "READY"))
        assert_serves(*await infer_mlp(client), seed=2, expected_version="2")

        # a version that does not load: the serving one stays, the index says why
        (repo / "mlp" / "3").mkdir()
        (repo / "mlp" / "3" / "model.onnx").write_bytes(models.corrupt_model_bytes())
        await until(lambda: _reason(index, ("mlp", "2"), "the last reload failed"))
        assert_serves(*await infer_mlp(client), seed=2, expected_version="2")

        # removed versions: back to version 2, then to version 1
        shutil.rmtree(repo / "mlp" / "3")
        await until(lambda: _reason(index, ("mlp", "2"), "", exact=True))
        shutil.rmtree(repo / "mlp" / "2")
        await until(lambda: _has(index, ("mlp", "1"), "READY"))
        assert_serves(*await infer_mlp(client), seed=1, expected_version="1")

        # a changed configuration
        (repo / "mlp" / "config.json").write_text(json.dumps({"max_batch_size": 4}))

        async def batch_is_4() -> bool:
            config = (await client.get("/v2/models/mlp/config")).json()
            return bool(config.get("max_batch_size") == 4)

        await until(batch_is_4)

        # a new model folder, then a removed one
        models.save(models.mlp_model(seed=3), repo / "other" / "1" / "model.onnx")
        await until(lambda: _has(index, ("other", "1"), "READY"))
        assert_serves(*await infer_mlp(client, "other"), seed=3, expected_version="1")
        shutil.rmtree(repo / "other")

        async def other_gone() -> bool:
            return (await client.get("/v2/models/other")).status_code == 404

        await until(other_gone)
        assert_serves(*await infer_mlp(client), seed=1, expected_version="1")


async def _true(value: bool) -> bool:
    return value


async def _has(
    index: Callable[[], Awaitable[dict[tuple[str, str], dict[str, Any]]]],
    key: tuple[str, str],
    state: str,
) -> bool:
    rows = await index()
    return (
        key in rows
        and rows[key]["state"] == state
        and len([k for k in rows if k[0] == key[0]]) == 1
    )


async def _reason(
    index: Callable[[], Awaitable[dict[tuple[str, str], dict[str, Any]]]],
    key: tuple[str, str],
    reason: str,
    exact: bool = False,
) -> bool:
    rows = await index()
    if key not in rows:
        return False
    found = rows[key]["reason"]
    return bool(found == reason if exact else reason in found)
