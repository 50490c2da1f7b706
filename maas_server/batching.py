"""The scheduler of one model version: priority queues, queue policies and the dynamic batcher.

Every request of a model goes through its scheduler. Requests wait in one queue per priority
level (1 is the highest). Whenever an instance is free, the scheduler picks the request to serve
next (by priority, then arrival, or smallest first with ``queue_order="shortest_first"``) and,
when dynamic batching is on, merges other queued requests whose non-batch dimensions and
datatypes match, up to ``max_batch_size`` rows. It holds a batch back for up to
``max_queue_delay_microseconds`` to let it grow, unless it already has a preferred size. Each
request gets exactly its own rows and requested outputs back.

Queue policies follow Triton: a full queue rejects at once (503 with ``Retry-After`` computed from
the observed drain rate); a request whose timeout expires in the queue is rejected (``REJECT``)
or moved behind everything else (``DELAY``), where it still counts in its level's
``max_queue_size``. A level whose policy sets no ``max_queue_size`` holds at most the server's
default (``Settings.max_queue_size``, 512). A request whose client went away is removed from
its queue and never takes a batch slot.

An instance counts as busy until its session call really returns: a request whose caller is
cancelled (its deadline ran out) while ONNX Runtime runs it keeps the instance busy, so the
scheduler never hands more runs to the pool than there are instances.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .config import DynamicBatching, ModelConfig
from .errors import BadRequestError, ModelUnavailableError
from .runtime import TensorSpec
from .settings import DEFAULT_MAX_QUEUE_SIZE
from .stats import ModelStats

__all__ = [
    "ClientDisconnected",
    "DrainRate",
    "QueueFullError",
    "QueueTimeoutError",
    "Runner",
    "Scheduler",
    "TimedOutputs",
    "retry_headers",
]

_SCAN_LIMIT = 512  # queued requests looked at when filling a batch, to bound the cost per batch


class Runner(Protocol):
    """What a scheduler runs its batches on: an :class:`~maas_server.runtime.OnnxModel`, or a
    pipeline's runner (:mod:`maas_server.pipeline`) that wraps the steps around one."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def config(self) -> ModelConfig: ...

    @property
    def max_batch_size(self) -> int: ...

    @property
    def outputs(self) -> list[TensorSpec]: ...

    async def run(
        self,
        feeds: dict[str, np.ndarray[Any, Any]],
        output_names: list[str],
        on_late_return: Callable[[], None] | None = None,
    ) -> dict[str, np.ndarray[Any, Any]]: ...


class TimedOutputs(dict[str, np.ndarray[Any, Any]]):
    """Outputs of a run that did more than the session call: ``input_ns`` of it went to
    preparing the inputs (tokenizing, ...), ``output_ns`` to the output steps (pooling, ...).
    The statistics count those as compute_input and compute_output, not compute_infer."""

    input_ns: int = 0
    output_ns: int = 0


class QueueFullError(ModelUnavailableError):
    """The request was refused because a queue or the server is full (503 + Retry-After)."""


class QueueTimeoutError(ModelUnavailableError):
    """The request's timeout expired while it waited in the queue (503)."""


class ClientDisconnected(Exception):
    """The client of a queued request went away; the request left the queue unanswered."""


class DrainRate:
    """Requests completed per second, over windows of about a second."""

    def __init__(self) -> None:
        self._start = time.monotonic()
        self._count = 0
        self.rate = 0.0

    def add(self, count: int) -> None:
        self._count += count
        now = time.monotonic()
        elapsed = now - self._start
        if elapsed >= 1.0:
            self.rate = self._count / elapsed
            self._start = now
            self._count = 0

    def retry_after(self, waiting: int) -> float:
        """Seconds until ``waiting`` requests have drained at the observed rate (0.05..60)."""
        rate = self.rate
        if rate <= 0:
            elapsed = time.monotonic() - self._start
            rate = self._count / elapsed if self._count and elapsed > 0 else 0.0
        if rate <= 0:
            return 1.0
        return min(60.0, max(0.05, waiting / rate))


def retry_headers(seconds: float) -> dict[str, str]:
    """``Retry-After`` (whole seconds, as HTTP wants) and ``retry-after-ms`` (precise)."""
    return {
        "Retry-After": str(max(1, math.ceil(seconds))),
        "retry-after-ms": str(int(seconds * 1000)),
    }


@dataclass(eq=False)
class _Pending:
    feeds: dict[str, np.ndarray[Any, Any]]
    outputs: list[str]
    rows: int
    key: tuple[Any, ...]
    level: int
    arrival_ns: int
    deadline_ns: int
    delay_on_timeout: bool
    future: asyncio.Future[dict[str, np.ndarray[Any, Any]]]
    queued: bool = True
    delayed: bool = False

    def __lt__(self, other: _Pending) -> bool:  # for the deadline heap
        return self.deadline_ns < other.deadline_ns


class _NoFuture:
    """Stands in for the future of a request that never waits in a queue."""

    def done(self) -> bool:
        return True


_NO_FUTURE: Any = _NoFuture()


@dataclass
class _Order:
    """Delivery in dispatch order, for ``preserve_ordering``."""

    next_dispatch: int = 0
    next_delivery: int = 0
    done: dict[int, list[tuple[_Pending, dict[str, np.ndarray[Any, Any]] | BaseException]]] = field(
        default_factory=dict
    )


class Scheduler:
    """Queues and batches the requests of one :class:`Runner` (an
    :class:`~maas_server.runtime.OnnxModel` or a pipeline's), counting them in ``stats``.

    It refers to its model and statistics and nothing refers back: the
    :class:`~maas_server.model_version.ModelVersion` that owns all three closes them.
    """

    def __init__(
        self,
        model: Runner,
        stats: ModelStats,
        default_max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
    ) -> None:
        self.model = model
        self.stats = stats
        self._closed = False
        config = model.config.dynamic_batching
        self.batching = config is not None and model.max_batch_size > 0
        self.config = config or DynamicBatching()
        self.max_batch_size = model.max_batch_size
        self._queues: list[deque[_Pending]] = [
            deque() for _ in range(max(1, self.config.priority_levels))
        ]
        self._delayed: deque[_Pending] = deque()
        self._deadlines: list[_Pending] = []
        self._size = 0
        # per priority level: requests waiting in its queue or, after a DELAY, in the delayed one
        self._level_sizes = [0] * len(self._queues)
        self._max_queue_sizes = [
            self.config.policy(level + 1).max_queue_size or default_max_queue_size
            for level in range(len(self._queues))
        ]
        self._busy = 0
        self._instances = model.config.instance_count
        # Instances lower priority levels may use; the rest wait for priority level 1.
        self._shared_instances = self._instances - self.config.reserved_instances
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._order = _Order() if self.config.preserve_ordering else None
        self._delay_ns = self.config.max_queue_delay_microseconds * 1000
        self._aging_ns = self.config.aging_microseconds * 1000
        self._preferred = set(self.config.preferred_batch_size)
        self._largest_preferred = max(self._preferred, default=0)
        self.drain = DrainRate()
        # Requests may skip the queue when no batching delay could let a batch grow and no
        # ordering across instances must be kept.
        self._fast = not self._delay_ns and self._order is None

    @property
    def queued(self) -> int:
        return self._size

    @property
    def delayed(self) -> int:
        """Queued requests whose timeout ran out under ``timeout_action: DELAY``."""
        return len(self._delayed)

    @property
    def busy(self) -> int:
        """Instances running a request now (until their session call really returns)."""
        return self._busy

    def close(self) -> None:
        """Refuse new requests (503): the version is closing."""
        self._closed = True

    # --- entry --------------------------------------------------------------------------

    def level_of(self, priority: int | None) -> int:
        """The queue index of a request's ``priority`` parameter (0 or absent: the default)."""
        levels = self.config.priority_levels
        if not levels:
            return 0
        if not priority:
            return self.config.default_priority_level - 1
        if priority > levels:
            raise BadRequestError(
                f"priority {priority} is out of range: model {self.model.name!r} has priority "
                f"levels 1 (highest) to {levels}"
            )
        return priority - 1

    async def infer(
        self,
        feeds: dict[str, np.ndarray[Any, Any]],
        outputs: list[str],
        priority: int | None = None,
        timeout_us: int | None = None,
        disconnected: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Run a validated request and return its outputs.

        With nothing queued and an instance free, the request runs at once (no queue, no
        dispatcher: for a model that runs inline this is a plain function call). Otherwise it
        waits in its priority queue; ``disconnected``, when given, is awaited meanwhile, and the
        request leaves the queue as soon as it returns (:class:`ClientDisconnected`).
        """
        if self._closed:
            raise ModelUnavailableError(
                f"model {self.model.name!r} version {self.model.version} was unloaded or "
                "replaced; retry"
            )
        level = self.level_of(priority)
        now = time.monotonic_ns()
        first = next(iter(feeds.values()), None)
        # Rows along the batch dimension (what Triton's statistics count for batched models).
        batched = self.max_batch_size > 0 and first is not None and first.ndim > 0
        rows = int(first.shape[0]) if batched and first is not None else 1
        limit = self._instances if level == 0 else self._shared_instances
        if self._fast and not self._size and self._busy < limit:
            return await self._run_now(feeds, outputs, rows, now)
        policy = self.config.policy(level + 1)
        queue = self._queues[level]
        bound = self._max_queue_sizes[level]
        if bound and self._level_sizes[level] >= bound:
            self.stats.record_failure(0, "queue_full")
            wait = self.drain.retry_after(self._size + self._busy)
            raise QueueFullError(
                f"model {self.model.name!r}: the queue is full ({bound} requests "
                f"waiting); retry in {wait:.2f} s",
                headers=retry_headers(wait),
            )
        loop = asyncio.get_running_loop()
        timeout = policy.timeout_us(timeout_us)
        key = (
            tuple((name, a.dtype.str, a.shape[1:]) for name, a in feeds.items())
            if self.batching
            else ()
        )
        pending = _Pending(
            feeds=feeds,
            outputs=outputs,
            rows=rows,
            key=key,
            level=level,
            arrival_ns=now,
            deadline_ns=now + timeout * 1000 if timeout else 0,
            delay_on_timeout=policy.timeout_action == "DELAY",
            future=loop.create_future(),
        )
        queue.append(pending)
        self._size += 1
        self._level_sizes[level] += 1
        self.stats.add_pending(1)
        if pending.deadline_ns:
            heapq.heappush(self._deadlines, pending)
        if self._task is None:
            self._task = loop.create_task(self._run())
        else:
            self._wake()
        watcher: asyncio.Task[None] | None = None
        if disconnected is not None:
            watcher = loop.create_task(disconnected())
            watcher.add_done_callback(lambda _: pending.future.cancel())
        try:
            return await pending.future
        except asyncio.CancelledError:
            self._forget(pending)
            if watcher is not None and watcher.done() and not watcher.cancelled():
                raise ClientDisconnected(
                    f"the client of a request to model {self.model.name!r} went away"
                ) from None
            raise
        finally:
            self.stats.add_pending(-1)
            if watcher is not None:
                watcher.cancel()

    async def _run_now(
        self, feeds: dict[str, np.ndarray[Any, Any]], outputs: list[str], rows: int, now: int
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Run a request without queueing it (the queue is empty and an instance is free)."""
        self._busy += 1
        self.stats.add_pending(1)
        try:
            pending = _Pending(feeds, outputs, rows, (), 0, now, 0, False, _NO_FUTURE)
            (result,) = await self._run_batch([pending], self._release)
        except asyncio.CancelledError:
            raise  # the session call may still run: the model calls _release when it returns
        except BaseException:
            self._release()
            raise
        self._release()
        if isinstance(result, BaseException):
            raise result
        return result

    def _release(self) -> None:
        """A request run without queueing is done with its instance."""
        self._busy -= 1
        self.stats.add_pending(-1)
        self.drain.add(1)
        if self._size:
            self._wake()

    def _forget(self, pending: _Pending) -> None:
        """Take a request whose caller has gone out of its queue."""
        if pending.queued:
            pending.queued = False
            queue = self._delayed if pending.delayed else self._queues[pending.level]
            queue.remove(pending)
            self._size -= 1
            self._level_sizes[pending.level] -= 1
            self.stats.record_failure(time.monotonic_ns() - pending.arrival_ns, "cancelled")

    # --- the dispatch loop --------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _sleep(self, until_ns: int | None) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        handle = None
        if until_ns is not None:
            delay = max(0.0, (until_ns - time.monotonic_ns()) / 1e9)
            handle = loop.call_later(delay, self._wake)
        try:
            await self._waiter
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()

    async def _run(self) -> None:
        try:
            while self._size:
                now = time.monotonic_ns()
                wake_at = self._expire(now)
                if self._busy < self._instances and self._size:
                    batch, hold_until = self._form(now)
                    if batch:
                        self._dispatch(batch)
                        continue
                    if hold_until is not None:
                        wake_at = hold_until if wake_at is None else min(wake_at, hold_until)
                await self._sleep(wake_at)
        finally:
            self._task = None

    def _expire(self, now: int) -> int | None:
        """Apply timeouts that have run out; return when the next one runs out."""
        heap = self._deadlines
        while heap and (not heap[0].queued or heap[0].delayed or heap[0].deadline_ns <= now):
            pending = heapq.heappop(heap)
            if not pending.queued or pending.delayed:
                continue
            queue = self._queues[pending.level]
            queue.remove(pending)
            if pending.delay_on_timeout:
                pending.delayed = True
                self._delayed.append(pending)
                continue
            pending.queued = False
            self._size -= 1
            self._level_sizes[pending.level] -= 1
            waited_us = (now - pending.arrival_ns) // 1000
            self.stats.record_failure(now - pending.arrival_ns, "timeout")
            if not pending.future.done():
                pending.future.set_exception(
                    QueueTimeoutError(
                        f"model {self.model.name!r}: the request timed out after waiting "
                        f"{waited_us} us in the queue"
                    )
                )
        return heap[0].deadline_ns if heap else None

    def _select(self, now: int) -> _Pending | None:
        for level, queue in enumerate(self._queues):
            if level and self._busy >= self._shared_instances:
                return None  # what is free is reserved for priority level 1
            if queue:
                head = queue[0]
                if self.config.queue_order == "fifo" or now - head.arrival_ns >= self._aging_ns:
                    return head
                best = head
                for index, pending in enumerate(queue):
                    if index >= _SCAN_LIMIT:
                        break
                    if now - pending.arrival_ns >= self._aging_ns:
                        return pending
                    if pending.rows < best.rows:
                        best = pending
                return best
        if self._busy >= self._shared_instances:
            return None
        return self._delayed[0] if self._delayed else None

    def _form(self, now: int) -> tuple[list[_Pending], int | None]:
        """The next batch to run, or nothing and until when to hold the batch back."""
        head = self._select(now)
        if head is None:
            return [], None
        batch = [head]
        rows = head.rows
        if self.batching and rows < self.max_batch_size:
            # A batch fills from its head's own queue only: lower-priority rows would make a
            # higher-priority request wait for their compute.
            queue = self._delayed if head.delayed else self._queues[head.level]
            for index, pending in enumerate(queue):
                if index >= _SCAN_LIMIT or rows >= self.max_batch_size:
                    break
                if (
                    pending is not head
                    and pending.key == head.key
                    and rows + pending.rows <= self.max_batch_size
                ):
                    batch.append(pending)
                    rows += pending.rows
            if (
                self._delay_ns
                and rows < self.max_batch_size
                and rows not in self._preferred
                and not (self._largest_preferred and rows >= self._largest_preferred)
            ):
                oldest = min(p.arrival_ns for p in batch)
                if now < oldest + self._delay_ns:
                    return [], oldest + self._delay_ns
        for pending in batch:
            pending.queued = False
            queue = self._delayed if pending.delayed else self._queues[pending.level]
            queue.remove(pending)
            self._level_sizes[pending.level] -= 1
        self._size -= len(batch)
        return batch, None

    def _dispatch(self, batch: list[_Pending]) -> None:
        self._busy += 1
        order = -1
        if self._order is not None:
            order = self._order.next_dispatch
            self._order.next_dispatch += 1
        asyncio.get_running_loop().create_task(self._execute(batch, order))

    # --- running a batch ----------------------------------------------------------------------

    async def _execute(self, batch: list[_Pending], order: int) -> None:
        try:
            results = await self._run_batch(batch)
            if len(batch) > 1 and any(isinstance(r, BaseException) for r in results):
                # A merged batch failed: run each request alone so only the bad one fails.
                results = [(await self._run_batch([p]))[0] for p in batch]
        finally:
            self._busy -= 1
            self.drain.add(len(batch))
            self._wake()
        self._deliver(list(zip(batch, results, strict=True)), order)

    async def _run_batch(
        self, batch: list[_Pending], on_late_return: Callable[[], None] | None = None
    ) -> list[dict[str, np.ndarray[Any, Any]] | BaseException]:
        start = time.monotonic_ns()
        try:
            if len(batch) == 1:
                feeds = batch[0].feeds
            else:
                feeds = {
                    name: np.concatenate([p.feeds[name] for p in batch]) for name in batch[0].feeds
                }
            wanted = {name for p in batch for name in p.outputs}
            names = [s.name for s in self.model.outputs if s.name in wanted]
            computed = time.monotonic_ns()
            results = await self.model.run(feeds, names, on_late_return)
            ran = time.monotonic_ns()
        except Exception as exc:
            now = time.monotonic_ns()
            for pending in batch:
                self.stats.record_failure(now - pending.arrival_ns, "execution_error")
            return [exc] * len(batch)
        out: list[dict[str, np.ndarray[Any, Any]] | BaseException] = []
        offset = 0
        for pending in batch:
            if len(batch) == 1:
                out.append({name: results[name] for name in pending.outputs})
            else:
                end = offset + pending.rows
                out.append({name: results[name][offset:end] for name in pending.outputs})
                offset = end
        done = time.monotonic_ns()
        input_ns, infer_ns, output_ns = computed - start, ran - computed, done - ran
        if isinstance(results, TimedOutputs):
            steps = results.input_ns + results.output_ns
            input_ns += results.input_ns
            output_ns += results.output_ns
            infer_ns = max(0, infer_ns - steps)
        self.stats.record_batch_success(
            [(p.rows, done - p.arrival_ns, start - p.arrival_ns) for p in batch],
            input_ns,
            infer_ns,
            output_ns,
        )
        return out

    def _deliver(
        self,
        results: list[tuple[_Pending, dict[str, np.ndarray[Any, Any]] | BaseException]],
        order: int,
    ) -> None:
        if self._order is None:
            _resolve(results)
            return
        self._order.done[order] = results
        while self._order.next_delivery in self._order.done:
            _resolve(self._order.done.pop(self._order.next_delivery))
            self._order.next_delivery += 1


def _resolve(
    results: list[tuple[_Pending, dict[str, np.ndarray[Any, Any]] | BaseException]],
) -> None:
    for pending, result in results:
        if pending.future.done():
            continue
        if isinstance(result, BaseException):
            pending.future.set_exception(result)
        else:
            pending.future.set_result(result)
