"""Several servers behind one client: which one takes each attempt, and which are left out.

``Client(["http://a:8000", "http://b:8000"])`` (or an :class:`Endpoints` for other settings)
spreads requests over the servers:

- each attempt goes to the endpoint with the fewest requests outstanding (ties in turn);
- a retried attempt goes to another endpoint than the one that just failed, at once (no
  back-off) when that failure was the endpoint's own (no connection, or 503);
- an endpoint is ejected after ``eject_after`` such failures in a row, and taken back only when
  ``GET /v2/health/ready`` answers 200, probed in the background every ``probe_interval``
  seconds (doubling up to ``max_probe_interval`` while it stays down);
- when every endpoint is ejected, the one whose probe is due first takes the attempt (a request
  is never refused for want of an endpoint).

The pool holds no I/O: the clients send the attempts and the probes, and report back here.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ._exceptions import APIConnectionError, APIStatusError, APITimeoutError

__all__ = [
    "Endpoint",
    "EndpointPool",
    "Endpoints",
    "Route",
    "endpoint_failure",
    "parse_urls",
]


def _check_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://, not {url!r}")
    return url


@dataclass(frozen=True)
class Endpoints:
    """Several servers for one client, and when to leave one out.

    >>> Client(Endpoints(["http://a:8000", "http://b:8000"], eject_after=2))  # doctest: +SKIP

    A plain list of URLs is the same with the defaults.
    """

    urls: Sequence[str]
    eject_after: int = 3
    """Consecutive failures (no connection, or 503) that eject an endpoint."""
    probe_interval: float = 1.0
    """Seconds from an ejection to the first readiness probe."""
    max_probe_interval: float = 30.0
    """The longest wait between two probes of an endpoint that stays down."""
    probe_timeout: float = 2.0
    """Seconds a readiness probe may take."""

    def __post_init__(self) -> None:
        urls = [self.urls] if isinstance(self.urls, str) else list(self.urls)
        if not urls:
            raise ValueError("give at least one URL")
        object.__setattr__(self, "urls", tuple(_check_url(u) for u in urls))
        if self.eject_after < 1:
            raise ValueError("eject_after must be at least 1")
        if self.probe_interval <= 0 or self.max_probe_interval < self.probe_interval:
            raise ValueError("probe intervals must be positive, the maximum above the first")


def parse_urls(value: str | Sequence[str] | Endpoints) -> Endpoints:
    """A URL, a comma-separated list of URLs, a sequence of them, or :class:`Endpoints`."""
    if isinstance(value, Endpoints):
        return value
    if isinstance(value, str):
        return Endpoints([part for part in value.split(",") if part.strip()] or [value])
    return Endpoints(list(value))


def endpoint_failure(error: BaseException) -> bool:
    """Whether a failure says the endpoint itself is down: no connection (a read that timed out
    after the request went out says the model is slow, not that the server is gone), or 503."""
    if isinstance(error, APITimeoutError):
        return not error.sent
    if isinstance(error, APIConnectionError):
        return True
    return isinstance(error, APIStatusError) and error.status_code == 503


@dataclass(eq=False)
class Endpoint:
    """One server of a pool and what the client knows of it."""

    url: str
    outstanding: int = 0
    """Attempts sent to it and not answered yet."""
    failures: int = 0
    """Endpoint failures in a row."""
    ejected: bool = False
    probe_at: float = 0.0
    """When an ejected endpoint is probed next (``time.monotonic``)."""
    probe_wait: float = 0.0
    probing: bool = False
    sent: int = 0
    """Attempts sent to it in all."""
    picked: int = 0
    """When it was last chosen (the pool's count of choices then)."""
    ejections: int = 0

    def __repr__(self) -> str:
        state = "ejected" if self.ejected else "in"
        return f"<Endpoint {self.url} {state} outstanding={self.outstanding} sent={self.sent}>"


@dataclass(eq=False)
class EndpointPool:
    """The endpoints of a client, shared by its :meth:`with_options` copies; thread-safe."""

    settings: Endpoints
    clock: Callable[[], float] = time.monotonic
    endpoints: list[Endpoint] = field(init=False)

    def __post_init__(self) -> None:
        self.endpoints = [Endpoint(url) for url in self.settings.urls]
        self._lock = threading.Lock()
        self._turn = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def route(self) -> Route:
        """The attempts of one call."""
        return Route(self)

    def acquire(self, avoid: Endpoint | None = None) -> Endpoint:
        """The endpoint for the next attempt, counted as outstanding until :meth:`release`."""
        with self._lock:
            candidates = [e for e in self.endpoints if not e.ejected]
            if avoid is not None and len(candidates) > 1:
                candidates = [e for e in candidates if e is not avoid]
            if not candidates:
                # Every endpoint is ejected: try the one whose probe is due first.
                candidates = [min(self.endpoints, key=lambda e: e.probe_at)]
            # Fewest outstanding; among equals, the one chosen longest ago.
            chosen = min(candidates, key=lambda e: (e.outstanding, e.picked))
            self._turn += 1
            chosen.picked = self._turn
            chosen.outstanding += 1
            chosen.sent += 1
            return chosen

    def release(self, endpoint: Endpoint, error: BaseException | None) -> None:
        """An attempt ended: ``error`` is what it failed with, ``None`` when it was answered."""
        with self._lock:
            endpoint.outstanding -= 1
            if error is None or not endpoint_failure(error):
                if not endpoint.ejected:
                    endpoint.failures = 0
                elif error is None:  # an answer from an ejected endpoint: it is back
                    self._reinstate(endpoint)
                return
            endpoint.failures += 1
            if not endpoint.ejected and endpoint.failures >= self.settings.eject_after:
                endpoint.ejected = True
                endpoint.ejections += 1
                endpoint.probe_wait = self.settings.probe_interval
                endpoint.probe_at = self.clock() + endpoint.probe_wait
            elif endpoint.ejected:
                self._later(endpoint)

    def can_fail_over(self, failed: Endpoint | None, error: BaseException) -> bool:
        """Whether the next attempt may go at once to another endpoint, without back-off."""
        if failed is None or not endpoint_failure(error):
            return False
        with self._lock:
            return any(e is not failed and not e.ejected for e in self.endpoints)

    def due_probes(self) -> list[Endpoint]:
        """Ejected endpoints whose probe is due, marked as being probed (probe each once)."""
        now = self.clock()
        with self._lock:
            due = [e for e in self.endpoints if e.ejected and not e.probing and e.probe_at <= now]
            for endpoint in due:
                endpoint.probing = True
            return due

    def probed(self, endpoint: Endpoint, ready: bool) -> None:
        """A probe's outcome: ready endpoints are taken back, the others probed later."""
        with self._lock:
            endpoint.probing = False
            if not endpoint.ejected:
                return
            if ready:
                self._reinstate(endpoint)
            else:
                self._later(endpoint)

    def available(self) -> list[str]:
        """The URLs of the endpoints that are not ejected."""
        with self._lock:
            return [e.url for e in self.endpoints if not e.ejected]

    def _reinstate(self, endpoint: Endpoint) -> None:
        endpoint.ejected = False
        endpoint.failures = 0
        endpoint.probe_wait = 0.0

    def _later(self, endpoint: Endpoint) -> None:
        endpoint.probe_wait = min(endpoint.probe_wait * 2, self.settings.max_probe_interval)
        endpoint.probe_at = self.clock() + endpoint.probe_wait


class Route:
    """The attempts of one call through a pool: each retry avoids the endpoint that failed."""

    __slots__ = ("failed", "pool")

    def __init__(self, pool: EndpointPool) -> None:
        self.pool = pool
        self.failed: Endpoint | None = None

    def acquire(self) -> Endpoint:
        return self.pool.acquire(self.failed)

    def release(self, endpoint: Endpoint, error: BaseException | None) -> None:
        self.pool.release(endpoint, error)
        self.failed = endpoint if error is not None else None

    def fail_over(self, error: BaseException) -> bool:
        """Whether the retry after ``error`` goes to another endpoint at once."""
        return self.pool.can_fail_over(self.failed, error)
