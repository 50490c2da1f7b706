"""A call's options with the client's settings filled in, and the timeouts they give."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from ._types import NOT_GIVEN, CallOptions, NotGiven, TimeoutLike

__all__ = [
    "ResolvedOptions",
    "as_timeout",
    "clamp_timeout",
    "injected_timeout",
    "resolve_options",
]


@dataclass(slots=True)
class ResolvedOptions:
    """A call's options with the client's settings filled in."""

    timeout: httpx.Timeout
    max_retries: int
    deadline: float | None
    headers: Mapping[str, str]
    request_id: str


def as_timeout(value: TimeoutLike) -> httpx.Timeout:
    return value if isinstance(value, httpx.Timeout) else httpx.Timeout(value)


def resolve_options(
    options: CallOptions, timeout: httpx.Timeout, max_retries: int, deadline: float | None
) -> ResolvedOptions:
    """``options`` over the client's ``timeout``, ``max_retries`` and ``deadline``."""
    given_timeout = options.get("timeout", NOT_GIVEN)
    given_retries = options.get("max_retries", NOT_GIVEN)
    given_deadline = options.get("deadline", NOT_GIVEN)
    retries = max_retries if isinstance(given_retries, NotGiven) else given_retries
    if retries < 0:
        raise ValueError("max_retries must not be negative")
    return ResolvedOptions(
        timeout=timeout if isinstance(given_timeout, NotGiven) else as_timeout(given_timeout),
        max_retries=retries,
        deadline=deadline if isinstance(given_deadline, NotGiven) else given_deadline,
        headers=options.get("extra_headers") or {},
        request_id=options.get("request_id") or os.urandom(16).hex(),  # as uuid4().hex
    )


def clamp_timeout(timeout: httpx.Timeout, remaining: float) -> httpx.Timeout:
    """``timeout`` with no phase longer than ``remaining`` seconds."""

    def clamp(value: float | None) -> float:
        return remaining if value is None else min(value, remaining)

    return httpx.Timeout(
        connect=clamp(timeout.connect),
        read=clamp(timeout.read),
        write=clamp(timeout.write),
        pool=clamp(timeout.pool),
    )


def injected_timeout(http_client: httpx.Client | httpx.AsyncClient | None) -> httpx.Timeout | None:
    """An injected client's own timeout, when it was set to something other than httpx's default."""
    if http_client is None or http_client.timeout == httpx.Timeout(5.0):
        return None
    return http_client.timeout
