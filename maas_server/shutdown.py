"""Graceful shutdown: the drain that comes before the process exits.

When :meth:`Shutdown.begin` is called (``maas serve`` calls it on SIGTERM or Ctrl-C), in order:

1. readiness (``/v2/health/ready``) answers 503, so load balancers stop sending traffic here;
2. every open generation stream is ended with a final error event saying the server is shutting
   down (each stream registers a callback with :meth:`Shutdown.subscribe`);
3. new requests get 503 with ``Retry-After`` and ``Connection: close`` (so that a client's retry
   goes to another replica), except the health probes and ``/metrics``;
4. the requests already accepted run to their end: :meth:`Shutdown.wait_idle` returns once none
   is left, or when its timeout passes;
5. :meth:`Shutdown.cut` then cancels the requests still running: those whose answer has not
   started get 503 with ``Retry-After`` (the model call itself cannot be stopped: its thread
   runs on).

The server itself (uvicorn, driven by ``maas serve``) stops listening and exits after that.

>>> shutdown = app.state.shutdown  # doctest: +SKIP
>>> shutdown.begin()  # doctest: +SKIP
>>> if not await shutdown.wait_idle(30.0):  # doctest: +SKIP
...     await shutdown.cut(1.0)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from .asgi import ASGIApp, Message, Receive, Scope, Send, send_error
from .auth import route_path
from .stats import Rejections

__all__ = ["CUT_MESSAGE", "DRAIN_OPEN_PATHS", "SHUTDOWN_MESSAGE", "Shutdown", "ShutdownGuard"]

logger = logging.getLogger("maas_server")

DRAIN_OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
"""Paths still answered while the server drains (probes and scrapes)."""

SHUTDOWN_MESSAGE = "the server is shutting down; retry the request on another replica"
"""What a request refused during the drain, and a stream cut by it, are told."""
CUT_MESSAGE = (
    "the server shut down before the request finished (its graceful timeout passed); retry the "
    "request on another replica"
)
"""What a request still running when the drain's time is up is told."""
_RETRY_ELSEWHERE = [(b"retry-after", b"1"), (b"connection", b"close")]


class Shutdown:
    """The server's shutdown state, on the event loop: whether it drains, the requests in flight,
    and the callbacks that end open streams."""

    def __init__(self) -> None:
        self.draining = False
        self.cutting = False
        self.began_at: float | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._next_id = 0
        self._idle: asyncio.Event | None = None

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when the drain begins (at once, on the loop, if it has begun);
        returns the function that unsubscribes it."""
        if self.draining:
            asyncio.get_running_loop().call_soon(callback)
            return _nothing
        key = self._next_id
        self._next_id += 1
        self._callbacks[key] = callback

        def unsubscribe() -> None:
            self._callbacks.pop(key, None)

        return unsubscribe

    def begin(self) -> None:
        """Start draining (idempotent); call it on the event loop."""
        if self.draining:
            return
        self.draining = True
        self.began_at = time.monotonic()
        callbacks, self._callbacks = list(self._callbacks.values()), {}
        for callback in callbacks:
            try:
                callback()
            except Exception:
                logger.exception("ending an open stream at shutdown failed")

    @property
    def inflight(self) -> int:
        """HTTP requests in flight (each its task)."""
        return len(self._tasks)

    def entered(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)

    def left(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not self._tasks and self._idle is not None:
            self._idle.set()

    async def cut(self, timeout: float) -> bool:
        """Cancel the requests still in flight (those whose answer has not started get 503 with
        ``Retry-After``), and wait up to ``timeout`` s for them to end; False if some did not."""
        self.cutting = True
        for task in list(self._tasks):
            task.cancel()
        return await self.wait_idle(timeout)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if some still are after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while self.inflight:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), remaining)
            except asyncio.TimeoutError:  # not yet TimeoutError itself on Python 3.10
                return not self.inflight
            finally:
                self._idle = None
        return True


def _nothing() -> None:
    return None


class ShutdownGuard:
    """Pure ASGI middleware: keeps the HTTP requests in flight and, while the server drains,
    refuses new ones (but :data:`DRAIN_OPEN_PATHS`) with 503, ``Retry-After: 1`` and
    ``Connection: close``; a request cancelled by :meth:`Shutdown.cut` before its answer started
    gets the same 503 (with :data:`CUT_MESSAGE`)."""

    def __init__(self, app: ASGIApp, *, shutdown: Shutdown, rejections: Rejections) -> None:
        self.app = app
        self.shutdown = shutdown
        self.rejections = rejections

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        shutdown = self.shutdown
        if shutdown.draining and route_path(scope) not in DRAIN_OPEN_PATHS:
            self.rejections.add("shutting_down")
            await send_error(send, 503, SHUTDOWN_MESSAGE, _RETRY_ELSEWHERE)
            return
        task = asyncio.current_task()
        assert task is not None
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        shutdown.entered(task)
        try:
            await self.app(scope, receive, send_tracked)
        except asyncio.CancelledError:
            if not shutdown.cutting or started:
                raise
            uncancel = getattr(task, "uncancel", None)  # Python 3.11+
            if uncancel is not None:
                uncancel()
            self.rejections.add("shutting_down")
            await send_error(send, 503, CUT_MESSAGE, _RETRY_ELSEWHERE)
        finally:
            shutdown.left(task)
