"""Streams of server-sent events: opening one with retries, iterating typed items, closing it.

A stream is opened like any call, through the client's transport (the lean one or httpx), and
its body is then read as it arrives. One attempt lasts until the first event: connection errors,
timeouts and retryable statuses up to then are retried like any call (the same request id,
back-off, ``Retry-After``, deadline). From the first event on nothing is retried, since part of
the answer has been delivered: a connection lost later raises :class:`APIConnectionError`.

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

from ._base import (
    REQUEST_ID_HEADER,
    RequestPlan,
    ResolvedOptions,
    connection_error,
)
from ._endpoints import Endpoint, Route, start_async_probes, start_probes
from ._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    APIStreamError,
)
from ._retry import async_retrying, sync_retrying
from ._sse import ServerSentEvent, SSEDecoder
from ._types import CallOptions

if TYPE_CHECKING:
    from typing_extensions import Self

    from ._client import AsyncClient, Client

__all__ = [
    "AsyncStream",
    "AsyncStreamStart",
    "Stream",
    "StreamStart",
    "open_async_stream",
    "open_stream",
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


def _is_event_stream(response: httpx.Response) -> bool:
    kind = str(response.headers.get("content-type", ""))
    return kind.split(";", 1)[0].strip().lower() == "text/event-stream"


def _not_an_event_stream(response: httpx.Response, request_id: str, attempts: int) -> Exception:
    kind = response.headers.get("content-type", "none")
    return APIResponseValidationError(
        f"the server answered {response.status_code} with {kind!r}, not an event stream",
        response=response,
        request_id=request_id,
        attempts=attempts,
    )


def _unreadable(
    response: httpx.Response, exc: ValueError, request_id: str, attempts: int
) -> APIResponseValidationError:
    return APIResponseValidationError(
        f"the event stream cannot be read: {exc}",
        response=response,
        request_id=request_id,
        attempts=attempts,
    )


def open_stream(client: Client, plan: RequestPlan, options: CallOptions) -> StreamStart:
    """Send ``plan`` and read up to its first event, retrying as any call is retried (a client
    of several servers sends each attempt to one of them, as for any call)."""
    resolved = client._resolve(options)
    start, deadline_at, route = client._begin_call(resolved)
    retrying = sync_retrying(
        client.retry_policy, client._retry_scope(plan, resolved, deadline_at, route)
    )
    for attempt in retrying:
        with attempt:
            number = attempt.retry_state.attempt_number
            if route is None:
                return _attempt(client, plan, resolved, number, start, deadline_at)
            endpoint = route.acquire()
            start_probes(client)
            try:
                opened = _attempt(client, plan, resolved, number, start, deadline_at, endpoint.url)
            except BaseException as exc:
                route.release(endpoint, exc)
                raise
            opened.release = _releaser(route, endpoint)
            return opened
    raise AssertionError("tenacity ended without an outcome")  # pragma: no cover


def _releaser(route: Route, endpoint: Endpoint) -> Callable[[BaseException | None], None]:
    def release(error: BaseException | None) -> None:
        route.release(endpoint, error)

    return release


def _attempt(
    client: Client,
    plan: RequestPlan,
    options: ResolvedOptions,
    number: int,
    start: float,
    deadline_at: float | None,
    base_url: str | None = None,
) -> StreamStart:
    request, response, sent_at = client._open_attempt(plan, options, number, deadline_at, base_url)
    try:
        client._log_response(request, response, sent_at)
        if not _is_event_stream(response):
            raise _not_an_event_stream(response, options.request_id, number)
        chunks = response.iter_bytes()
        decoder = SSEDecoder()
        events: list[ServerSentEvent] = []
        ended = False
        while not events and not ended:
            chunk = next(chunks, None)
            if chunk is None:
                ended = True
            else:
                events = decoder.feed(chunk)
    except httpx.TransportError as exc:
        response.close()
        raise connection_error(
            exc, request, request_id=options.request_id, attempts=number
        ) from exc
    except ValueError as exc:
        response.close()
        raise _unreadable(response, exc, options.request_id, number) from None
    except BaseException:
        response.close()
        raise
    return StreamStart(response, decoder, events, ended, options.request_id, number, start, chunks)


async def open_async_stream(
    client: AsyncClient, plan: RequestPlan, options: CallOptions
) -> AsyncStreamStart:
    """The ``async`` twin of :func:`open_stream`."""
    resolved = client._resolve(options)
    start, deadline_at, route = client._begin_call(resolved)
    retrying = async_retrying(
        client.retry_policy, client._retry_scope(plan, resolved, deadline_at, route)
    )
    async for attempt in retrying:
        with attempt:
            number = attempt.retry_state.attempt_number
            if route is None:
                return await _async_attempt(client, plan, resolved, number, start, deadline_at)
            endpoint = route.acquire()
            start_async_probes(client)
            try:
                opened = await _async_attempt(
                    client, plan, resolved, number, start, deadline_at, endpoint.url
                )
            except BaseException as exc:
                route.release(endpoint, exc)
                raise
            opened.release = _releaser(route, endpoint)
            return opened
    raise AssertionError("tenacity ended without an outcome")  # pragma: no cover


async def _async_attempt(
    client: AsyncClient,
    plan: RequestPlan,
    options: ResolvedOptions,
    number: int,
    start: float,
    deadline_at: float | None,
    base_url: str | None = None,
) -> AsyncStreamStart:
    request, response, sent_at = await client._open_attempt(
        plan, options, number, deadline_at, base_url
    )
    try:
        client._log_response(request, response, sent_at)
        if not _is_event_stream(response):
            raise _not_an_event_stream(response, options.request_id, number)
        chunks = response.aiter_bytes()
        decoder = SSEDecoder()
        events: list[ServerSentEvent] = []
        ended = False
        while not events and not ended:
            chunk = await anext(chunks, None)
            if chunk is None:
                ended = True
            else:
                events = decoder.feed(chunk)
    except httpx.TransportError as exc:
        await response.aclose()
        raise connection_error(
            exc, request, request_id=options.request_id, attempts=number
        ) from exc
    except ValueError as exc:
        await response.aclose()
        raise _unreadable(response, exc, options.request_id, number) from None
    except BaseException:
        await response.aclose()
        raise
    return AsyncStreamStart(
        response, decoder, events, ended, options.request_id, number, start, chunks
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
        start: StreamStart,
        parse: Callable[[Any], _T],
        *,
        on_end: Callable[[], None] | None = None,
    ) -> None:
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
