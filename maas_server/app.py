"""The ASGI application: ``create_app(settings)`` wires routes, error handlers and lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from .dataplane import DataPlane
from .errors import ServerError
from .repository import ModelRepository
from .routes import JSONBytesResponse, routes
from .settings import Settings

__all__ = ["create_app"]

logger = logging.getLogger("maas_server")


async def _server_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServerError)
    return JSONBytesResponse(
        {"error": exc.message}, status_code=exc.status_code, headers=exc.headers
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONBytesResponse(
        {"error": exc.detail}, status_code=exc.status_code, headers=exc.headers
    )


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONBytesResponse({"error": f"internal server error: {exc}"}, status_code=500)


def create_app(settings: Settings) -> Starlette:
    """The maas server for one model repository.

    With ``model_control="none"`` every model is loaded when the app starts (its lifespan);
    loading failures are recorded in the repository index and do not stop the server.
    """
    repository = ModelRepository(
        settings.repository, inline_threshold_us=settings.inline_threshold_us
    )
    dataplane = DataPlane(repository, settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if settings.model_control == "none":
            for name in repository.model_names():
                await asyncio.to_thread(repository.load, name)
        dataplane.started = True
        try:
            yield
        finally:
            dataplane.started = False
            await asyncio.to_thread(repository.close)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ServerError: _server_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
    )
    app.state.dataplane = dataplane
    app.state.settings = settings
    return app
