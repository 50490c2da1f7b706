"""How a batch job leaves room for a model's online requests (:class:`Pacing`).

A job on its own runs the model as fast as it can. While other requests use the model (seen in
its statistics), it sends one small request at a time and leaves the model idle as long as each
took, so that an online request waits behind at most :data:`POLITE_ROWS` rows of the job and
half of the CPU stays free.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from .stats import ModelStats

__all__ = ["POLITE_ROWS", "YIELD_MAX_IDLE_S", "YIELD_WINDOW_S", "Pacing"]

YIELD_WINDOW_S = 0.25
"""How long a job stays polite after it last saw a request that is not its own."""
YIELD_MAX_IDLE_S = 0.1
POLITE_ROWS = 16
"""Rows per request of a job while other requests use the model: a request waiting behind one
of the job's waits for at most that many rows."""


class Pacing:
    """Leaves room for a model's other requests (online traffic). While the model's statistics
    show requests that are not the job's (within the last :data:`YIELD_WINDOW_S`), the job sends
    one request at a time, of at most :data:`POLITE_ROWS` rows, and leaves the model idle for as
    long as that request took: half of the model, and of the CPU, stays free for them, and one
    of them waits behind at most one small request of the job. With no other traffic the job
    runs at full speed."""

    def __init__(self) -> None:
        self._stats: ModelStats | None = None
        self._base = 0
        self._own = 0  # requests of the job the statistics have counted or will
        self._inflight = 0
        self._seen = 0
        self._until = 0.0
        self._one = asyncio.Lock()

    def polite(self, stats: ModelStats) -> bool:
        """Whether other requests use the model now (the job then yields)."""
        return self._others_active(stats)

    def _others_active(self, stats: ModelStats) -> bool:
        total = stats.success.count + stats.fail.count
        if stats is not self._stats:  # a new version: its own statistics
            self._stats, self._base, self._own, self._seen = stats, total, 0, 0
        # requests in flight may be counted already: at least this many are someone else's
        others = total - self._base - self._own - self._inflight
        now = time.monotonic()
        if others > self._seen:
            self._seen = others
            self._until = now + YIELD_WINDOW_S
        return now < self._until

    async def run(
        self,
        stats: ModelStats,
        call: Callable[[], Awaitable[dict[str, np.ndarray[Any, Any]]]],
    ) -> dict[str, np.ndarray[Any, Any]]:
        if not self._others_active(stats):
            return await self._counted(call)
        async with self._one:
            started = time.monotonic()
            result = await self._counted(call)
            await asyncio.sleep(min(YIELD_MAX_IDLE_S, time.monotonic() - started))
            return result

    async def _counted(
        self, call: Callable[[], Awaitable[dict[str, np.ndarray[Any, Any]]]]
    ) -> dict[str, np.ndarray[Any, Any]]:
        self._inflight += 1
        try:
            return await call()
        finally:
            self._inflight -= 1
            self._own += 1
