"""The connection pool of the lean transports, under :class:`httpx.Limits`.

- ``max_connections``: connections open at once, over all origins (``None``: no cap). A request
  that finds the pool full waits for a connection to come back (a keep-alive one of its origin
  is handed over directly, otherwise the slot of one that closed), up to the pool timeout
  (``request.extensions["timeout"]["pool"]``), then raises :class:`httpx.PoolTimeout`. Waiters
  are served in arrival order. When the pool is full of idle connections to other origins, the
  oldest of them is closed to make room.
- ``max_keepalive_connections``: idle connections kept for reuse, over all origins; more are
  closed as they come back.
- ``keepalive_expiry``: an idle connection older than this is closed instead of reused.

The pool only counts and hands over; opening, checking and closing connections is the
transport's (blocking sockets, or asyncio protocols). Waiting differs by I/O flavour too: the
transport gives each :class:`Waiter` the function that wakes it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import httpx

__all__ = ["DEFAULT_LIMITS", "Origin", "Pool", "Waiter"]

# httpx's own defaults, so that a client keeps the same limits over either transport.
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5)

Origin = tuple[str, int]


class _Connection(Protocol):
    origin: Origin

    def close(self) -> None: ...


C = TypeVar("C", bound=_Connection)


class Waiter(Generic[C]):
    """A request waiting for a connection: ``granted`` once it has one (``connection``) or a
    slot to open one in (``connection`` is ``None``)."""

    __slots__ = ("connection", "granted", "origin", "wake")

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        # Set by the waiting transport right after checkout; a grant before that is seen in
        # ``granted``, one after it calls ``wake``.
        self.wake: Callable[[], None] | None = None
        self.granted = False
        self.connection: C | None = None


class Pool(Generic[C]):
    """Idle connections by origin, and the count of open ones (see the module's doc)."""

    def __init__(self, limits: httpx.Limits) -> None:
        self._max = limits.max_connections
        self._max_idle = limits.max_keepalive_connections
        self._expiry = limits.keepalive_expiry
        self._lock = threading.Lock()
        self._idle: dict[Origin, list[tuple[C, float]]] = {}
        self._idle_count = 0
        self._open = 0  # connections open or being opened (slots taken)
        self._waiters: deque[Waiter[C]] = deque()
        self.closed = False

    @property
    def open_connections(self) -> int:
        return self._open

    def checkout(
        self, origin: Origin, usable: Callable[[C], bool], fresh: bool = False
    ) -> C | Waiter[C] | None:
        """An idle connection to ``origin`` (unless ``fresh``); or ``None``: a slot is taken,
        open a connection in it (give it back with :meth:`discard` if that fails); or a
        :class:`Waiter` to wait on, then :meth:`settle`."""
        stale: list[C] = []
        try:
            with self._lock:
                if self.closed:
                    raise RuntimeError("the transport is closed")
                idle = None if fresh else self._idle.get(origin)
                if idle:
                    now = time.monotonic()
                    while idle:
                        connection, since = idle.pop()
                        self._idle_count -= 1
                        if self._expired(since, now) or not usable(connection):
                            stale.append(connection)
                            self._open -= 1
                            continue
                        return connection
                if self._max is None or self._open < self._max:
                    self._open += 1
                    return None
                victim = self._evict_oldest()
                if victim is not None:  # its slot is ours
                    stale.append(victim)
                    return None
                waiter: Waiter[C] = Waiter(origin)
                self._waiters.append(waiter)
                return waiter
        finally:
            for connection in stale:
                connection.close()

    def settle(self, waiter: Waiter[C]) -> C | None:
        """What a waiter got once woken or timed out: a connection, or ``None`` (a slot to open
        one in); :class:`httpx.PoolTimeout` when it got nothing."""
        with self._lock:
            if not waiter.granted:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                if self.closed:
                    raise RuntimeError("the transport is closed")
                raise httpx.PoolTimeout("timed out waiting for a connection from the pool")
            return waiter.connection

    def abandon(self, waiter: Waiter[C]) -> None:
        """A waiter cancelled from outside: what it was granted goes back to the pool."""
        with self._lock:
            if not waiter.granted:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                return
        if waiter.connection is not None:
            self.release(waiter.connection, reusable=True)
        else:
            self.discard()

    def release(self, connection: C, reusable: bool) -> None:
        """A connection whose answer is over: kept for reuse, handed to a waiter, or closed."""
        close = True
        with self._lock:
            if reusable and not self.closed:
                for waiter in self._waiters:
                    if waiter.origin == connection.origin:
                        self._waiters.remove(waiter)
                        self._grant(waiter, connection)
                        return
            if self._waiters:
                self._grant(self._waiters.popleft(), None)  # our slot, for a new connection
            elif (
                reusable
                and not self.closed
                and (self._max_idle is None or self._idle_count < self._max_idle)
            ):
                idle = self._idle.setdefault(connection.origin, [])
                idle.append((connection, time.monotonic()))
                self._idle_count += 1
                close = False
            else:
                self._open -= 1
        if close:
            connection.close()

    def discard(self) -> None:
        """A slot whose connection failed to open, or was closed: for a waiter, or freed."""
        with self._lock:
            if self._waiters:
                self._grant(self._waiters.popleft(), None)
            else:
                self._open -= 1

    def close(self) -> list[C]:
        """Close the pool: the idle connections to close are returned; waiters are woken."""
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, {}
            self._open -= self._idle_count
            self._idle_count = 0
            waiters, self._waiters = list(self._waiters), deque()
        for waiter in waiters:
            if waiter.wake is not None:
                waiter.wake()
        return [connection for connections in idle.values() for connection, _ in connections]

    # under the lock

    def _expired(self, since: float, now: float) -> bool:
        return self._expiry is not None and now - since > self._expiry

    def _grant(self, waiter: Waiter[C], connection: C | None) -> None:
        waiter.granted = True
        waiter.connection = connection
        if waiter.wake is not None:
            waiter.wake()

    def _evict_oldest(self) -> C | None:
        oldest: tuple[Origin, int, float] | None = None
        for origin, idle in self._idle.items():
            if idle and (oldest is None or idle[0][1] < oldest[2]):
                oldest = (origin, 0, idle[0][1])
        if oldest is None:
            return None
        connection, _ = self._idle[oldest[0]].pop(0)
        self._idle_count -= 1
        return connection
