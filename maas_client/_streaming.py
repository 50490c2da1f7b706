"""Streams of server-sent events: what the two streams share that is not I/O (turning events
into items or errors, the opened stream's state); the streams themselves are in
``_async/_streams.py`` (and the blocking one generated from it).

A stream is opened like any call, by the client's pipeline (``open_stream``: send, stop at the
first event), and its body is then read as it arrives. One attempt lasts until the first event:
connection errors, timeouts and retryable statuses up to then are retried like any call (the
same request id, back-off, ``Retry-After``, deadline). From the first event on nothing is
retried, since part of the answer has been delivered: a connection lost later raises
:class:`APIConnectionError`.

Every event's data is JSON. An ``event: error``, or data holding an ``"error"`` key, raises
:class:`APIStreamError` with the server's message; data the client cannot read raises
:class:`APIResponseValidationError`; ``data: [DONE]`` (OpenAI's end marker) is skipped. The
response is closed when the stream ends, fails, is closed, or the loop over it is left:

>>> with client.generate_stream("tiny_gpt", "Hello") as stream:  # doctest: +SKIP
...     for chunk in stream:
...         print(chunk.text, end="")
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import httpx

from ._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    APIStreamError,
)
from ._plans import REQUEST_ID_HEADER
from ._sse import ServerSentEvent, SSEDecoder
from ._status import connection_error

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "AsyncOpener",
    "AsyncStreamStart",
    "Opener",
    "OpensAtOnce",
    "OpensOnFirstUse",
    "StreamCore",
    "StreamStart",
    "is_event_stream",
    "not_an_event_stream",
    "unreadable",
]

_T = TypeVar("_T")
_DONE = "[DONE]"


@dataclass
class _Start:
    response: httpx.Response
    decoder: SSEDecoder
    events: list[ServerSentEvent]
    """Events read while the attempt waited for the first one."""
    ended: bool
    """Whether the body ended already."""
    request_id: str
    attempts: int
    started: float
    """When the call began (:func:`time.monotonic`)."""
    release: Callable[[BaseException | None], None] | None = field(default=None, kw_only=True)
    """Called once when the stream is closed, with the connection error that ended it (a
    client of several servers counts the stream as outstanding on its endpoint until then)."""


@dataclass
class StreamStart(_Start):
    """An opened event stream: the response, and the body's iterator, read up to the first event."""

    chunks: Iterator[bytes]


@dataclass
class AsyncStreamStart(_Start):
    """The ``async`` twin of :class:`StreamStart`."""

    chunks: AsyncIterator[bytes]


Opener = Callable[[], StreamStart]
"""What opens a blocking stream: the pipeline's ``open_stream`` for one call."""
AsyncOpener = Callable[[], Awaitable[AsyncStreamStart]]
"""What opens an asynchronous stream."""


# --- opening ---------------------------------------------------------------------------------


def is_event_stream(response: httpx.Response) -> bool:
    kind = str(response.headers.get("content-type", ""))
    return kind.split(";", 1)[0].strip().lower() == "text/event-stream"


def not_an_event_stream(response: httpx.Response, request_id: str, attempts: int) -> Exception:
    kind = response.headers.get("content-type", "none")
    return APIResponseValidationError(
        f"the server answered {response.status_code} with {kind!r}, not an event stream",
        response=response,
        request_id=request_id,
        attempts=attempts,
    )


def unreadable(
    response: httpx.Response, exc: ValueError, request_id: str, attempts: int
) -> APIResponseValidationError:
    return APIResponseValidationError(
        f"the event stream cannot be read: {exc}",
        response=response,
        request_id=request_id,
        attempts=attempts,
    )


# --- iterating -------------------------------------------------------------------------------


def _error_message(data: Any) -> str | None:
    """The server's message in an error event's data: ``{"error": "..."}`` or OpenAI's
    ``{"error": {"message": "..."}}``."""
    if not isinstance(data, dict) or "error" not in data:
        return None
    error = data["error"]
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return error if isinstance(error, str) else str(error)


class StreamCore(Generic[_T]):
    """What the two streams share: turning events into items or errors (no I/O)."""

    _start: _Start | None
    _parse: Callable[[Any], _T]
    _on_end: Callable[[], None] | None
    _pending: deque[ServerSentEvent]
    _ended: bool
    _closed: bool
    _lost_with: APIConnectionError | None

    def _setup(self, parse: Callable[[Any], _T], on_end: Callable[[], None] | None) -> None:
        self._start = None
        self._parse = parse
        self._on_end = on_end
        self._pending = deque()
        self._ended = False
        self._closed = False
        self._lost_with = None

    def _begin(self, start: _Start) -> None:
        self._start = start
        self._pending.extend(start.events)
        self._ended = start.ended

    def _opened(self) -> _Start:
        if self._start is None:
            raise RuntimeError("the stream is not open yet: use 'async with' or await it")
        return self._start

    @property
    def response(self) -> httpx.Response:
        """The HTTP response the events arrive in."""
        return self._opened().response

    @property
    def request_id(self) -> str:
        """The server's ``X-Request-ID`` (the one the call sent, unless the server changed it)."""
        start = self._opened()
        return str(start.response.headers.get(REQUEST_ID_HEADER, start.request_id))

    @property
    def attempts(self) -> int:
        """Attempts it took to open the stream."""
        return self._opened().attempts

    @property
    def started(self) -> float:
        """When the call began, on :func:`time.monotonic`'s clock."""
        return self._opened().started

    def _item(self, event: ServerSentEvent) -> _T | None:
        """The item an event carries, ``None`` for one to skip; raises the error it reports."""
        start = self._opened()
        if event.data == _DONE:
            return None
        try:
            data = event.json()
        except ValueError as exc:
            raise self._invalid(f"an event's data is not JSON: {exc}", event.data) from None
        message = _error_message(data)
        if message is None and event.event == "error":
            message = event.data
        if message is not None:
            raise APIStreamError(
                f"the server reported an error in the stream: {message}",
                response=start.response,
                error=message,
                event=event.event,
                body=data,
                request_id=self.request_id,
                attempts=start.attempts,
            )
        try:
            return self._parse(data)
        except ValueError as exc:
            raise self._invalid(f"an event is not what the stream carries: {exc}", data) from None

    def _end(self) -> None:
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            try:
                on_end()
            except ValueError as exc:
                raise self._invalid(str(exc), None) from None

    def _invalid(self, message: str, body: Any) -> APIResponseValidationError:
        start = self._opened()
        return APIResponseValidationError(
            message,
            response=start.response,
            body=body,
            request_id=self.request_id,
            attempts=start.attempts,
        )

    def _lost(self, exc: httpx.TransportError) -> APIConnectionError:
        start = self._opened()
        self._lost_with = connection_error(
            exc, start.response.request, request_id=start.request_id, attempts=start.attempts
        )
        return self._lost_with

    def _release(self) -> None:
        start = self._start
        if start is not None and start.release is not None:
            release, start.release = start.release, None
            release(self._lost_with)


class OpensOnFirstUse:
    """An asynchronous stream opens on first use: ``async with``, ``await`` or ``async for``."""

    _ensure_open: Callable[[], Awaitable[None]]

    def _open_when_made(self) -> None:
        return None

    def __await__(self) -> Generator[Any, None, Self]:
        return self._open_self().__await__()

    async def _open_self(self) -> Self:
        await self._ensure_open()
        return self


class OpensAtOnce:
    """A blocking stream is open when the call returns: errors until its first event are raised
    there (the blocking twin of :class:`OpensOnFirstUse`, which the generated code uses)."""

    _ensure_open: Callable[[], None]

    def _open_when_made(self) -> None:
        self._ensure_open()
