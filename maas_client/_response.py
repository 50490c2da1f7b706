"""Raw HTTP answers: ``client.with_raw_response.<call>(...)`` returns a :class:`RawResponse`.

A raw call runs exactly like the plain one (validation, retries, errors) and hands back the
:class:`httpx.Response` with a :meth:`RawResponse.parse` that gives what the plain call returns.
The wrappers mark the call with a context variable that only the call's own request reads, so
requests made on the way (fetching metadata to check inputs) are parsed as usual.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from typing import Generic, ParamSpec, TypeVar

import httpx

from ._answers import Answer

__all__ = [
    "AsyncCall",
    "Call",
    "RawResponse",
    "begin_raw_call",
    "end_raw_call",
    "raw_response_requested",
]

_T = TypeVar("_T")
_P = ParamSpec("_P")

_RAW_RESPONSE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "maas_client_raw_response", default=False
)


def raw_response_requested() -> bool:
    """Whether the call being made was made through ``with_raw_response``."""
    return _RAW_RESPONSE.get()


class RawResponse(Generic[_T]):
    """The HTTP answer of a call made through ``client.with_raw_response``.

    ``http_response`` is the :class:`httpx.Response` (its body already read); :meth:`parse`
    turns it into what the plain call returns.

    >>> raw = client.with_raw_response.models.get("digits")  # doctest: +SKIP
    >>> raw.status_code, raw.headers["content-type"], raw.parse().name  # doctest: +SKIP
    """

    def __init__(self, answer: Answer, parse: Callable[[Answer], _T]) -> None:
        self._answer = answer
        self._parse = parse

    @property
    def http_response(self) -> httpx.Response:
        return self._answer.response

    @property
    def status_code(self) -> int:
        return self._answer.response.status_code

    @property
    def headers(self) -> httpx.Headers:
        return self._answer.response.headers

    @property
    def content(self) -> bytes:
        return bytes(self._answer.content)

    @property
    def request_id(self) -> str:
        """The ``X-Request-ID`` the call sent."""
        return self._answer.request_id

    @property
    def attempts(self) -> int:
        return self._answer.attempts

    @property
    def elapsed(self) -> float:
        """Seconds the call took, retries included."""
        return self._answer.seconds

    def parse(self) -> _T:
        return self._parse(self._answer)

    def __repr__(self) -> str:
        return f"<RawResponse [{self.status_code}] {self.http_response.request.url}>"


def begin_raw_call() -> contextvars.Token[bool]:
    """Mark the call being made as made through ``with_raw_response`` (until
    :func:`end_raw_call`)."""
    return _RAW_RESPONSE.set(True)


def end_raw_call(token: contextvars.Token[bool]) -> None:
    _RAW_RESPONSE.reset(token)


Call = Callable[_P, _T]
"""A blocking call."""
AsyncCall = Callable[_P, Awaitable[_T]]
"""An asynchronous call (what ``_async`` code takes where the generated code takes a
:data:`Call`)."""
