"""Server-sent events: the response that streams them, and the watch for a client that leaves.

Starlette's ``StreamingResponse`` notices a disconnect only through the server (a failed send, or
a listener whose behaviour depends on the ASGI spec version). Generation must stop the moment a
client goes away, whether or not a send is pending, so this response listens for
``http.disconnect`` itself and calls ``on_disconnect`` right away.

>>> EventStreamResponse(chunks(), on_disconnect=stream.cancel)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .shutdown import SHUTDOWN_MESSAGE, Shutdown

__all__ = ["EventStreamResponse", "StreamDeadline", "sse_event", "watch_disconnect"]

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_event(data: Any, event: str | None = None) -> bytes:
    """One event: ``data: <json>`` (bytes are sent as they are), after ``event: <name>``."""
    payload = data if isinstance(data, bytes) else orjson.dumps(data)
    if event is None:
        return b"data: " + payload + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"


async def watch_disconnect(receive: Receive, on_disconnect: Callable[[], None]) -> None:
    """Wait for the client to go away, then call ``on_disconnect`` (cancel this to stop)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            on_disconnect()
            return


class EventStreamResponse(Response):
    """A ``text/event-stream`` answer whose body comes from ``chunks`` (each one or more whole
    events). ``on_disconnect`` runs once if the client leaves before the end."""

    media_type = "text/event-stream"

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        on_disconnect: Callable[[], None],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.chunks = chunks
        self.on_disconnect = on_disconnect
        self.status_code = 200
        self.background = None
        self.init_headers({**SSE_HEADERS, **(headers or {})})
        self.disconnected = False

    def _gone(self) -> None:
        if not self.disconnected:
            self.disconnected = True
            self.on_disconnect()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.get_running_loop().create_task(watch_disconnect(receive, self._gone))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.chunks:
                if self.disconnected:
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if not self.disconnected:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the server says the client is gone (ASGI spec 2.4)
            self._gone()
        finally:
            watcher.cancel()
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                await aclose()


class StreamDeadline:
    """The request deadline (``request_timeout_s``) for a stream that has started, and the
    server's shutdown.

    The request guard answers 504 when no answer has started within the deadline, but an event
    stream starts with its first event. This timer, counted from when the route starts (the
    request has just arrived), ends the stream when the deadline passes or when the server
    begins to shut down (``shutdown``, see :mod:`maas_server.shutdown`): ``on_expire`` stops the
    generation, and the stream sends :attr:`message` as its last (error) event. ``timeout_s``
    0: no deadline.

    >>> deadline = StreamDeadline(30.0, app.state.shutdown)
    >>> deadline.start(stream.cancel)  # once the first event is out
    """

    def __init__(self, timeout_s: float, shutdown: Shutdown | None = None) -> None:
        self.timeout_s = timeout_s
        self.shutdown = shutdown
        self.arrival = time.monotonic()
        self.expired = False
        self.shutting_down = False
        self._handle: asyncio.TimerHandle | None = None
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def message(self) -> str:
        if self.shutting_down:
            return f"{SHUTDOWN_MESSAGE}; the stream was cut"
        return (
            f"the request deadline of {self.timeout_s:g} s passed; the stream was cut "
            "(the server's request_timeout_s)"
        )

    @property
    def error_type(self) -> str:
        """The OpenAI error type of :attr:`message`."""
        return "service_unavailable" if self.shutting_down else "timeout"

    def start(self, on_expire: Callable[[], None]) -> None:
        def cut() -> None:
            if not self.expired:
                self.expired = self.shutting_down = True
                on_expire()

        if self.shutdown is not None:
            self._unsubscribe = self.shutdown.subscribe(cut)
        if not self.timeout_s:
            return

        def expire() -> None:
            if not self.expired:
                self.expired = True
                on_expire()

        remaining = self.arrival + self.timeout_s - time.monotonic()
        self._handle = asyncio.get_running_loop().call_later(max(0.0, remaining), expire)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
