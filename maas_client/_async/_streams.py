"""Streams of server-sent events as they arrive: items parsed from the events of an open
response, and the stream of a text generation.

A stream is opened by the client's pipeline (``open_stream``: the attempt that stops at the first
event). An :class:`AsyncStream` opens on first use (``async with``, ``await``, or the first
``async for`` step); a blocking :class:`~maas_client.Stream` is open when the call returns, so
that errors until the first event are raised there. Leaving a loop over a stream early
(``break``, an exception), ``close()`` and the end of its ``with`` block close the response,
which tells the server the client is gone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from .._generation import CollectedText, Collector, Generation, GenerationChunk
from .._sse import ServerSentEvent
from .._streaming import AsyncOpener, OpensOnFirstUse, StreamCore

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["AsyncGenerationStream", "AsyncStream"]

_T = TypeVar("_T")


class AsyncStream(OpensOnFirstUse, StreamCore[_T]):
    """Items of type ``T`` parsed from the events of a response; see the module's doc.

    >>> async with client.generate_stream("tiny_gpt", "Hello") as stream:  # doctest: +SKIP
    ...     async for chunk in stream:
    ...         print(chunk.text, end="")
    """

    def __init__(
        self,
        opener: AsyncOpener,
        parse: Callable[[Any], _T],
        *,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        self._setup(parse, on_end)
        self._opener: AsyncOpener | None = opener
        self._chunks: AsyncIterator[bytes] | None = None
        self._open_when_made()

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
            # The loop was left (break, an exception) or the stream ended: either way the
            # connection has nothing more to give.
            await self.close()

    async def until_done(self) -> None:
        """Read the rest of the stream (raising what it reports)."""
        async for _ in self:
            pass

    async def close(self) -> None:
        """Close the response; the server sees the connection go. Safe to call again (a stream
        never opened is simply marked closed)."""
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

    async def __aenter__(self) -> Self:
        await self._ensure_open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class AsyncGenerationStream(CollectedText, AsyncStream[GenerationChunk]):
    """The chunks of a streamed generation, as they arrive; what ``generate_stream`` returns.

    >>> with client.generate_stream("tiny_gpt", "Hello", max_tokens=8) as stream:  # doctest: +SKIP
    ...     for chunk in stream:
    ...         print(chunk.text, end="", flush=True)
    ...     print(stream.get_final().completion_tokens)

    ``text`` is the text so far. :meth:`get_final` reads the rest and returns the whole
    :class:`~maas_client.Generation`. Leaving the loop early, :meth:`close` or the end of the
    ``with`` block close the connection, and the server stops generating. An
    :class:`AsyncGenerationStream` opens on first use, so ``stream = await
    client.generate_stream(...)`` works too.
    """

    def __init__(self, opener: AsyncOpener) -> None:
        self._collector = Collector()
        super().__init__(opener, self._collector.add, on_end=self._collector.check_end)

    async def get_final(self) -> Generation:
        """Read the rest of the stream and return the whole generation.

        Raises :class:`RuntimeError` when the stream was closed before its last event.
        """
        await self.until_done()
        if self._start is None:
            raise RuntimeError("the stream was closed before it opened")
        return self._collector.final(self.request_id, self.started, self.attempts)
