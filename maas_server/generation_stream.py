"""A generation as the event loop sees it: the token ids an engine thread hands over, turned
into :class:`GenerationEvent` objects by a :class:`GenerationStream`.

The engine (:mod:`maas_server.generation`) puts each sequence's token ids into its
:class:`TokenChannel`, then a :class:`SequenceEnd` (or a :class:`~maas_server.errors.ServerError`).
The stream detokenizes them into pieces of complete UTF-8 text, holds back and cuts stop strings,
and ends with an event that carries the finish reason and the token counts.

>>> async for events in stream.chunks():
...     for event in events:
...         print(event.text, event.finish_reason)
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from .errors import InternalError, ServerError
from .tokenizer import IncrementalDetokenizer

__all__ = [
    "CLOSED",
    "FinishReason",
    "GenerationEvent",
    "GenerationResult",
    "GenerationStream",
    "SequenceEnd",
    "TokenChannel",
    "merge_chunks",
    "notify",
]

FinishReason = Literal["stop", "length"]


@dataclass
class GenerationEvent:
    """A new piece of text and the tokens that made it; the last event of a sequence has
    ``finish_reason`` set, no text, and the token counts."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class GenerationResult:
    """A whole generation, as :meth:`GenerationStream.collect` gathers it."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


class _Closed:
    """Marks a stream that its consumer cancelled."""


@dataclass(frozen=True)
class SequenceEnd:
    """The engine's last word on a sequence: it stopped on an EOS token (``eos``, counted but
    never turned into text) or at its limit."""

    reason: FinishReason
    eos: int | None = None


CLOSED = _Closed()
"""What the engine sends to a stream that its consumer cancelled."""

_Item = int | SequenceEnd | ServerError | _Closed


class TokenChannel:
    """Items from the engine thread to one consumer on the event loop: token ids, then an
    :class:`SequenceEnd` or a :class:`ServerError`.

    The engine appends without blocking. It wakes the consumer only when the consumer waits, and
    wakes all the consumers of one step with a single call into their loop (:func:`notify`), so
    a consumer that lags behind picks up everything that arrived in one go.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._items: deque[_Item] = deque()
        self._lock = threading.Lock()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: _Item, wake: bool = True) -> asyncio.Future[None] | None:
        """Append ``item``; with ``wake``, the consumer's waiter to wake if it waits (else the
        consumer finds the item with the next one that wakes it)."""
        with self._lock:
            self._items.append(item)
            if not wake:
                return None
            waiter, self._waiter = self._waiter, None
        return waiter

    def send(self, item: _Item) -> None:
        """Append ``item`` and wake the consumer now."""
        waiter = self.put(item)
        if waiter is not None:
            self.loop.call_soon_threadsafe(_wake, waiter)

    async def take(self) -> list[_Item]:
        while True:
            with self._lock:
                if self._items:
                    items = list(self._items)
                    self._items.clear()
                    return items
                waiter = self._waiter = self.loop.create_future()
            await waiter


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _wake_all(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


def notify(waiters: list[asyncio.Future[None]]) -> None:
    """Wake consumers (from any thread): one call into each event loop."""
    loop = waiters[0].get_loop()
    if all(w.get_loop() is loop for w in waiters):
        loop.call_soon_threadsafe(_wake_all, waiters)
        return
    for waiter in waiters:
        waiter.get_loop().call_soon_threadsafe(_wake, waiter)


class _StopStrings:
    """Finds stop strings in generated text, holding back any tail that may begin one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._held = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """The text that is safe to send, and whether a stop string ended the sequence."""
        if not self._stops:
            return piece, False
        text = self._held + piece
        found = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        if found:
            self._held = ""
            return text[: min(found)], True
        keep = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), keep, -1):
                if text.endswith(stop[:size]):
                    keep = size
                    break
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def release(self) -> str:
        held, self._held = self._held, ""
        return held


class GenerationStream:
    """The results of one sequence, read on the event loop.

    The engine thread only hands over token ids; turning them into text (complete UTF-8 pieces)
    and watching for stop strings happens here, off the decode loop's critical path. A stop
    string ends the stream at once and takes the sequence out of the engine (``cancel``).

    Iterate over :meth:`chunks` (lists of the events that are ready) or call :meth:`collect`;
    an error inside the loop is raised as a :class:`ServerError`. :meth:`cancel` (or leaving
    ``async with``) takes the sequence out of the engine before its next step.
    """

    def __init__(
        self,
        channel: TokenChannel,
        prompt_tokens: int,
        detokenizer: IncrementalDetokenizer,
        stop: Sequence[str],
        cancel: Callable[[bool], None],
        text_started: Callable[[], None],
    ) -> None:
        self._channel = channel
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.done = False
        self._detokenizer = detokenizer
        self._stops = _StopStrings(stop)
        self._cancel = cancel  # takes the sequence out of the engine; True: it is complete
        self._text_started = text_started  # tells the engine the first text is out
        self._started = False
        self._pending: list[int] = []
        self._error: ServerError | None = None

    def cancel(self) -> None:
        if not self.done:
            self.done = True
            self._cancel(False)

    def _final(self, reason: FinishReason) -> GenerationEvent:
        self.done = True
        pending, self._pending = self._pending, []
        return GenerationEvent("", pending, reason, self.prompt_tokens, self.completion_tokens)

    def _events(self, items: list[_Item]) -> list[GenerationEvent]:
        """Events for what the engine sent; raises the engine's error."""
        events: list[GenerationEvent] = []
        for item in items:
            if type(item) is int:
                self.completion_tokens += 1
                self._pending.append(item)
                piece = self._detokenizer.push(item)
                if not piece:
                    continue
                text, stopped = self._stops.feed(piece)
                if text:
                    events.append(GenerationEvent(text, self._pending))
                    self._pending = []
                    if not self._started:
                        self._started = True
                        self._text_started()
                if stopped:
                    self._cancel(True)  # a stop string: the request is complete, not cancelled
                    events.append(self._final("stop"))
                    return events
            elif isinstance(item, SequenceEnd):
                reason = item.reason
                if item.eos is not None:
                    self.completion_tokens += 1
                    self._pending.append(item.eos)
                text, stopped = self._stops.feed(self._detokenizer.flush())
                if stopped:
                    reason = "stop"
                else:
                    text += self._stops.release()
                if text:
                    events.append(GenerationEvent(text, self._pending))
                    self._pending = []
                events.append(self._final(reason))
                return events
            elif isinstance(item, ServerError):
                self.done = True
                self._error = item
                return events
            else:  # _Closed: cancelled by the consumer
                self.done = True
                return events
        return events

    async def chunks(self) -> AsyncGenerator[list[GenerationEvent]]:
        while not self.done:
            events = self._events(await self._channel.take())
            if events:
                yield events
            if self._error is not None:
                raise self._error

    async def collect(self) -> GenerationResult:
        texts: list[str] = []
        ids: list[int] = []
        last: GenerationEvent | None = None
        async for events in self.chunks():
            for event in events:
                texts.append(event.text)
                ids.extend(event.token_ids)
                last = event
        if last is None or last.finish_reason is None:
            raise InternalError("the generation was cancelled")
        return GenerationResult(
            "".join(texts), ids, last.finish_reason, last.prompt_tokens, last.completion_tokens
        )

    async def __aenter__(self) -> GenerationStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()


async def merge_chunks(
    streams: Sequence[GenerationStream],
) -> AsyncGenerator[tuple[int, list[GenerationEvent]]]:
    """The chunks of several streams as they come, each with its stream's index; the first
    error of any stream is raised."""
    if len(streams) == 1:
        async for events in streams[0].chunks():
            yield 0, events
        return
    queue: asyncio.Queue[tuple[int, list[GenerationEvent]] | Exception | None] = asyncio.Queue()

    async def pump(index: int, stream: GenerationStream) -> None:
        try:
            async for events in stream.chunks():
                queue.put_nowait((index, events))
            queue.put_nowait(None)
        except Exception as exc:
            queue.put_nowait(exc)

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
