"""In-process apps for the security and observability tests: a fresh app per test, with only the
models a test needs loaded (``model_control="explicit"``), driven through ``httpx.ASGITransport``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx
import numpy as np
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette

from maas_client.codec import HEADER_LENGTH
from maas_client.protocol import TensorPayload, encode_request
from maas_server import Settings, create_app

__all__ = ["asgi_app", "bearer", "mlp_request"]


@asynccontextmanager
async def asgi_app(
    settings: Settings, models: Sequence[str] = ("mlp",)
) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    """The app for ``settings`` with ``models`` loaded, and a client wired to it."""
    app = create_app(replace(settings, model_control="explicit"))
    async with LifespanManager(app) as manager:
        for name in models:
            await asyncio.to_thread(app.state.dataplane.repository.load, name)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://maas.test"
        ) as client:
            yield app, client


def mlp_request(rows: int = 1, binary: bool = True, **kwargs: Any) -> dict[str, Any]:
    """``httpx`` arguments (content, headers) of an inference request for the ``mlp`` model."""
    array = np.ones((rows, 64), dtype=np.float32)
    body = encode_request([TensorPayload("input", array, "FP32", binary)], **kwargs)
    headers = {}
    if body.header_length is not None:
        headers[HEADER_LENGTH] = str(body.header_length)
    return {"content": bytes(body.content), "headers": headers}


def bearer(key: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **headers}
