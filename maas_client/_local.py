"""Embedded mode: ``Client.local(path)`` runs the server in-process, with no network port.

The maas app (needs the ``server`` extra) is driven through :class:`httpx.ASGITransport`, so a
local client sends the very requests a remote one does and gets the same answers and errors. The
app's lifespan (loading the models) is run here: on a background event loop thread for the
blocking :class:`~maas_client.Client`, on the caller's loop, at the first request, for
:class:`~maas_client.AsyncClient`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import warnings
import weakref
from contextlib import AbstractAsyncContextManager
from importlib.metadata import entry_points
from typing import Any

import httpx

__all__ = [
    "LOCAL_URL",
    "AsyncLocalTransport",
    "LocalTransport",
    "local_app",
]

LOCAL_URL = "http://maas.local"
"""The base URL of an embedded server (never resolved: no request leaves the process)."""

EMBEDDED_GROUP = "maas.embedded"
"""Entry-point group where a server package registers the app factory ``Client.local`` runs."""

_SERVER_MISSING = "Client.local runs the server in-process and needs it: pip install 'maas[server]'"


def local_app(repository: str | os.PathLike[str] | None, settings: Any = None) -> Any:
    """The maas app over ``repository`` (default: the bundled examples), or over ``settings``.

    The server registers its app factory under the ``maas.embedded`` entry-point group; the
    client finds it there rather than importing the server package.
    """
    found = entry_points(group=EMBEDDED_GROUP)
    if not found:
        raise ImportError(_SERVER_MISSING)
    factory = next(iter(found)).load()
    return factory(repository, settings)


def _lifespan(app: Any) -> AbstractAsyncContextManager[Any]:
    context: AbstractAsyncContextManager[Any] = app.router.lifespan_context(app)
    return context


_RawHeaders = list[tuple[bytes, bytes]]


def _read_timeout(request: httpx.Request) -> float | None:
    timeout: dict[str, float | None] = request.extensions.get("timeout", {})
    return timeout.get("read")


class LocalTransport(httpx.BaseTransport):
    """A blocking transport to an ASGI app running on an event loop thread of its own."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._asgi = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="maas-local", daemon=True
        )
        self._thread.start()
        self._stop: asyncio.Event | None = None
        started = concurrent.futures.Future[None]()
        self._lifespan = asyncio.run_coroutine_threadsafe(self._run(started), self._loop)
        try:
            started.result()
        except BaseException:
            _shutdown_loop(self._loop, self._thread)
            raise
        self._closed = False
        # Left open, the server is stopped at interpreter exit (or when the transport is
        # collected), before the loop thread dies under its lifespan, with a ResourceWarning.
        self._finalizer = weakref.finalize(
            self, _close_left_open, self._loop, self._thread, self._stop, self._lifespan
        )

    async def _run(self, started: concurrent.futures.Future[None]) -> None:
        self._stop = asyncio.Event()
        try:
            async with _lifespan(self._app):
                started.set_result(None)
                await self._stop.wait()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
                return
            raise

    async def _exchange(self, request: httpx.Request) -> tuple[int, _RawHeaders, bytes]:
        response = await self._asgi.handle_async_request(request)
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        return response.status_code, response.headers.raw, content

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the local server is closed")
        request.read()  # the body in memory: the app's loop reads it from there
        future = asyncio.run_coroutine_threadsafe(self._exchange(request), self._loop)
        try:
            status, headers, content = future.result(timeout=_read_timeout(request))
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise httpx.ReadTimeout("the local server did not answer in time") from None
        return httpx.Response(status, headers=headers, content=content)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        _stop_server(self._loop, self._thread, self._stop, self._lifespan)


def _stop_server(
    loop: asyncio.AbstractEventLoop,
    thread: threading.Thread,
    stop: asyncio.Event | None,
    lifespan: concurrent.futures.Future[None],
) -> None:
    """End the app's lifespan, then its event loop and thread."""
    if stop is not None:
        loop.call_soon_threadsafe(stop.set)
    try:
        lifespan.result(timeout=60)
    finally:
        _shutdown_loop(loop, thread)


def _close_left_open(
    loop: asyncio.AbstractEventLoop,
    thread: threading.Thread,
    stop: asyncio.Event | None,
    lifespan: concurrent.futures.Future[None],
) -> None:
    warnings.warn(
        "a Client.local() was left open: its server is stopped now; close the client "
        "(with Client.local(...) as client: ...) to stop it when you are done",
        ResourceWarning,
        stacklevel=1,
    )
    with contextlib.suppress(Exception):  # at exit, a failed shutdown has nobody to tell
        _stop_server(loop, thread, stop, lifespan)


def _shutdown_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=30)
    if not thread.is_alive():
        loop.close()


class AsyncLocalTransport(httpx.AsyncBaseTransport):
    """An asynchronous transport to an ASGI app on the caller's event loop; the app's lifespan
    starts at the first request and ends with :meth:`aclose`."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._asgi = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        self._context: AbstractAsyncContextManager[Any] | None = None
        self._lock: asyncio.Lock | None = None
        self._closed = False

    async def start(self) -> None:
        """Run the app's startup (load the models) now rather than at the first request."""
        if self._context is not None:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._context is None:
                context = _lifespan(self._app)
                await context.__aenter__()
                self._context = context

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the local server is closed")
        await self.start()
        await request.aread()
        return await self._asgi.handle_async_request(request)

    async def aclose(self) -> None:
        self._closed = True
        context, self._context = self._context, None
        if context is not None:
            await context.__aexit__(None, None, None)
