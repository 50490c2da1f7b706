"""Streams of server-sent events: iterating typed items, closing them.

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
    "AsyncStream",
    "AsyncStreamStart",
    "Stream",
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


class _StreamCore(Generic[_T]):
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


class Stream(_StreamCore[_T]):
    """Items of type ``T`` parsed from the events of an open response; see the module's doc.

    Iterate it (``for item in stream``) or call ``next(stream)``. Leaving a ``for`` loop early
    (``break``, an exception), :meth:`close` and the end of a ``with`` block close the response,
    which tells the server the client is gone.
    """

    def __init__(
        self,
        start: StreamStart | Callable[[], StreamStart],
        parse: Callable[[Any], _T],
        *,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        if not isinstance(start, StreamStart):
            start = start()  # a blocking stream opens at once: its errors are raised here
        self._setup(parse, on_end)
        self._begin(start)
        self._chunks: Iterator[bytes] = start.chunks

    def __next__(self) -> _T:
        try:
            while True:
                item = self._item(self._next_event())
                if item is not None:
                    return item
        except StopIteration:
            raise
        except BaseException:
            self.close()
            raise

    def _next_event(self) -> ServerSentEvent:
        start = self._opened()
        while not self._pending:
            if self._closed:
                raise StopIteration
            if self._ended:
                self.close()
                self._end()
                raise StopIteration
            try:
                chunk = next(self._chunks, None)
            except httpx.TransportError as exc:
                raise self._lost(exc) from exc
            if chunk is None:
                self._ended = True
                self._pending.extend(start.decoder.end())
            else:
                try:
                    self._pending.extend(start.decoder.feed(chunk))
                except ValueError as exc:
                    raise self._invalid(f"the event stream cannot be read: {exc}", None) from None
        return self._pending.popleft()

    def __iter__(self) -> Iterator[_T]:
        try:
            while True:
                try:
                    item = next(self)
                except StopIteration:
                    return
                yield item
        finally:
            # The loop was left (break, an exception) or the stream ended: either way the
            # connection has nothing more to give.
            self.close()

    def until_done(self) -> None:
        """Read the rest of the stream (raising what it reports)."""
        for _ in self:
            pass

    def close(self) -> None:
        """Close the response; the server sees the connection go. Safe to call again."""
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        try:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
            self.response.close()
        finally:
            self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncStream(_StreamCore[_T]):
    """The ``async`` twin of :class:`Stream`. It opens on first use: ``async with``, ``await``,
    or the first ``async for`` step.

    >>> async with client.generate_stream("tiny_gpt", "Hello") as stream:  # doctest: +SKIP
    ...     async for chunk in stream:
    ...         print(chunk.text, end="")

    Leaving an ``async for`` loop early closes the response as soon as the event loop finalizes
    the loop's iterator (at once on ``break`` inside ``async with``, which closes it itself).
    """

    def __init__(
        self,
        opener: Callable[[], Awaitable[AsyncStreamStart]],
        parse: Callable[[Any], _T],
        *,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        self._setup(parse, on_end)
        self._opener: Callable[[], Awaitable[AsyncStreamStart]] | None = opener
        self._chunks: AsyncIterator[bytes] | None = None

    async def _ensure_open(self) -> None:
        opener, self._opener = self._opener, None
        if opener is not None:
            start = await opener()
            self._begin(start)
            self._chunks = start.chunks

    async def __anext__(self) -> _T:
        if self._closed:
            raise StopAsyncIteration
        await self._ensure_open()
        try:
            while True:
                item = self._item(await self._next_event())
                if item is not None:
                    return item
        except StopAsyncIteration:
            raise
        except BaseException:
            await self.close()
            raise

    async def _next_event(self) -> ServerSentEvent:
        start = self._opened()
        assert self._chunks is not None
        while not self._pending:
            if self._closed:
                raise StopAsyncIteration
            if self._ended:
                await self.close()
                self._end()
                raise StopAsyncIteration
            try:
                chunk = await anext(self._chunks, None)
            except httpx.TransportError as exc:
                raise self._lost(exc) from exc
            if chunk is None:
                self._ended = True
                self._pending.extend(start.decoder.end())
            else:
                try:
                    self._pending.extend(start.decoder.feed(chunk))
                except ValueError as exc:
                    raise self._invalid(f"the event stream cannot be read: {exc}", None) from None
        return self._pending.popleft()

    async def __aiter__(self) -> AsyncIterator[_T]:
        try:
            while True:
                try:
                    item = await self.__anext__()
                except StopAsyncIteration:
                    return
                yield item
        finally:
            await self.close()

    async def until_done(self) -> None:
        """Read the rest of the stream (raising what it reports)."""
        async for _ in self:
            pass

    async def close(self) -> None:
        """Close the response (a stream never opened is simply marked closed)."""
        if self._closed:
            return
        self._closed = True
        self._opener = None
        self._pending.clear()
        try:
            if self._chunks is not None:
                aclose = getattr(self._chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
            if self._start is not None:
                await self._start.response.aclose()
        finally:
            self._release()

    def __await__(self) -> Generator[Any, None, Self]:
        return self._open_self().__await__()

    async def _open_self(self) -> Self:
        await self._ensure_open()
        return self

    async def __aenter__(self) -> Self:
        await self._ensure_open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
