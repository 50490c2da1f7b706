"""Small shared types: the ``NOT_GIVEN`` sentinel and the aliases used in signatures.

``NOT_GIVEN`` means "use the client's setting", which ``None`` cannot mean: ``timeout=None``
switches the timeout off, ``timeout=NOT_GIVEN`` (the default) keeps the client's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Final, Literal, TypedDict, TypeVar

import httpx

__all__ = [
    "NOT_GIVEN",
    "AsyncAttempt",
    "CallOptions",
    "HeadersLike",
    "NotGiven",
    "SyncAttempt",
    "TimeoutLike",
    "VersionLike",
    "given",
]

_T = TypeVar("_T")

AsyncAttempt = Callable[..., Awaitable[_T]]
"""One attempt of a call in the asynchronous pipeline (its blocking twin: :data:`SyncAttempt`)."""
SyncAttempt = Callable[..., _T]
"""One attempt of a call in the blocking pipeline."""


class NotGiven:
    """The type of :data:`NOT_GIVEN`: an argument the caller left out (unlike ``None``).

    >>> client.infer("digits", x, timeout=None)  # no timeout at all   # doctest: +SKIP
    >>> client.infer("digits", x)                # the client's timeout  # doctest: +SKIP
    """

    _instance: NotGiven | None = None

    def __new__(cls) -> NotGiven:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> Literal[False]:
        return False

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __reduce__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Final = NotGiven()
"""The default of every per-call option: fall back to the client's setting."""

TimeoutLike = float | httpx.Timeout | None
"""Seconds for every phase, an :class:`httpx.Timeout` for each phase, or ``None`` for none."""

HeadersLike = Mapping[str, str]
"""Extra HTTP headers."""

VersionLike = str | int | None
"""A model version: ``None`` lets the server choose (the newest it serves)."""


class CallOptions(TypedDict, total=False):
    """Options every call accepts as keyword arguments; each overrides the client's setting.

    - ``timeout``: per network phase (connect, read, write, pool), as in httpx.
    - ``max_retries``: retries after the first attempt (``0`` switches retries off).
    - ``deadline``: seconds for the whole call, retries and back-off included.
    - ``extra_headers``: HTTP headers added to this call.
    - ``request_id``: the ``X-Request-ID`` sent (the same on every attempt); generated if absent.
    """

    timeout: TimeoutLike | NotGiven
    max_retries: int | NotGiven
    deadline: float | NotGiven | None
    extra_headers: HeadersLike | None
    request_id: str | None


def given(value: _T | NotGiven, default: _T) -> _T:
    """``value`` unless it is :data:`NOT_GIVEN`, else ``default``."""
    return default if isinstance(value, NotGiven) else value
