"""The errors the client raises.

::

    MaasError
    ├── InputError                   inputs that do not fit the model (raised before sending)
    ├── BatchError                   infer_batched: some chunks failed; the rest is kept
    └── APIError                     anything about a call to the server
        ├── APIResponseValidationError   an answer the client cannot parse
        ├── APIConnectionError           no answer: refused, reset, DNS, TLS...
        │   └── APITimeoutError          no answer in time (or the call's deadline passed)
        ├── APIStreamError               an error the server sent inside a stream it had begun
        └── APIStatusError               a non-2xx answer; one subclass per status
            ├── BadRequestError 400, AuthenticationError 401, PermissionDeniedError 403,
            ├── NotFoundError 404 (ModelNotFoundError when a model or version is unknown),
            ├── ConflictError 409, PayloadTooLargeError 413, UnprocessableEntityError 422,
            ├── RateLimitError 429
            └── InternalServerError 5xx (ServiceUnavailableError 503)

Every :class:`APIError` carries the request id sent in ``X-Request-ID`` and the number of
attempts made; an :class:`APIStatusError` also carries the status, the server's ``error`` message,
the parsed body and the :class:`httpx.Response`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

if TYPE_CHECKING:
    from ._batched import BatchResult

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APIStreamError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BatchError",
    "ChunkFailure",
    "ConflictError",
    "InputError",
    "InternalServerError",
    "MaasError",
    "ModelNotFoundError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServiceUnavailableError",
    "UnprocessableEntityError",
]


class MaasError(Exception):
    """Base class of every error raised by ``maas_client``."""

    @property
    def hint(self) -> str:
        """What to try next, in a sentence."""
        from ._display import error_hint

        return error_hint(self)

    def __repr__(self) -> str:
        from ._display import error_repr

        return error_repr(self)

    def _repr_html_(self) -> str:
        from ._display import error_html

        return error_html(self)


class InputError(MaasError, ValueError):
    """Inputs that cannot be sent: unknown or missing names, wrong rank or dimension, a lossy cast.

    Raised before anything is sent; the message names the input, what the model expects and
    what was given.
    """


class APIError(MaasError):
    """A call to the server failed.

    ``request`` is the last :class:`httpx.Request` sent (``None`` if none was built),
    ``request_id`` the ``X-Request-ID`` it carried and ``attempts`` how many were made.
    """

    message: str
    request: httpx.Request | None
    body: Any
    request_id: str | None
    attempts: int

    def __init__(
        self,
        message: str,
        *,
        request: httpx.Request | None = None,
        body: Any = None,
        request_id: str | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.request = request
        self.body = body
        self.request_id = request_id
        self.attempts = attempts

    def __str__(self) -> str:
        if self.attempts > 1:
            return f"{self.message} (after {self.attempts} attempts)"
        return self.message


class _ResponseError(APIError):
    """An error that came with an HTTP response: its request, status and the response itself."""

    def __init__(
        self,
        message: str,
        *,
        response: httpx.Response,
        body: Any = None,
        request_id: str | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(
            message,
            request=response.request,
            body=body,
            request_id=request_id,
            attempts=attempts,
        )
        self.response = response
        self.status_code = response.status_code


class APIResponseValidationError(_ResponseError):
    """The server answered 2xx with something that is not what the protocol says it sends."""


class APIConnectionError(APIError):
    """No answer came back: the connection was refused, reset or could not be made."""

    def __init__(
        self,
        message: str = "connection error",
        *,
        request: httpx.Request | None = None,
        request_id: str | None = None,
        attempts: int = 1,
        sent: bool = True,
    ) -> None:
        super().__init__(message, request=request, request_id=request_id, attempts=attempts)
        self.sent = sent
        """Whether the request may have reached the server (``False``: it certainly did not)."""


class APITimeoutError(APIConnectionError):
    """No answer in time: a network phase timed out, or the call's deadline passed."""


class APIStreamError(_ResponseError):
    """The server began a stream (2xx, some events sent) and then reported an error inside it.

    ``error`` is the server's message, ``body`` the event's parsed data, ``event`` the event's
    type (``error``) and ``response`` the :class:`httpx.Response` of the stream. Never retried:
    part of the answer was delivered already.
    """

    def __init__(
        self,
        message: str,
        *,
        response: httpx.Response,
        error: str,
        event: str,
        body: Any = None,
        request_id: str | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(
            message, response=response, body=body, request_id=request_id, attempts=attempts
        )
        self.error = error
        self.event = event


class APIStatusError(_ResponseError):
    """The server answered with a non-2xx status.

    ``error`` is the server's own message (the ``error`` field of its JSON body, or the body's
    text), ``body`` the parsed body and ``response`` the :class:`httpx.Response`.
    """

    def __init__(
        self,
        message: str,
        *,
        response: httpx.Response,
        error: str,
        body: Any = None,
        request_id: str | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(
            message, response=response, body=body, request_id=request_id, attempts=attempts
        )
        self.error = error


class BadRequestError(APIStatusError):
    """400: the request is malformed or does not fit the model."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing or wrong."""


class PermissionDeniedError(APIStatusError):
    """403: the API key may not do this."""


class NotFoundError(APIStatusError):
    """404: no such endpoint or resource."""


class ModelNotFoundError(NotFoundError):
    """404 on a model's endpoint: no such model, or no such version of it."""

    def __init__(
        self,
        message: str,
        *,
        response: httpx.Response,
        error: str,
        model: str,
        version: str | None = None,
        body: Any = None,
        request_id: str | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(
            message,
            response=response,
            error=error,
            body=body,
            request_id=request_id,
            attempts=attempts,
        )
        self.model = model
        self.version = version


class ConflictError(APIStatusError):
    """409: the request conflicts with the server's state."""


class PayloadTooLargeError(APIStatusError):
    """413: the request body exceeds the server's limit."""


class UnprocessableEntityError(APIStatusError):
    """422: the server understood the request but cannot process it."""


class RateLimitError(APIStatusError):
    """429: too many requests; retried by default, honouring ``Retry-After``."""


class InternalServerError(APIStatusError):
    """5xx: the server failed (500, 502 and 504 are retried by default)."""


class ServiceUnavailableError(InternalServerError):
    """503: the server or the model is not ready; retried by default."""


@dataclass(frozen=True)
class ChunkFailure:
    """Rows ``start:stop`` of an :meth:`~maas_client.Client.infer_batched` call, and why they
    failed: ``error`` is what the chunk's last attempt raised, or (``sent=False``) the error of
    an earlier chunk after which no more chunks were sent."""

    start: int
    stop: int
    error: BaseException
    sent: bool = True

    @property
    def rows(self) -> range:
        return range(self.start, self.stop)


class BatchError(MaasError):
    """Some chunks of an :meth:`~maas_client.Client.infer_batched` call failed after retries.

    Nothing computed is lost: ``result`` holds the outputs of the rows that succeeded (``None``
    when none did), ``succeeded_rows`` their row numbers in the input, ``failures`` each failed
    chunk with its rows and error, and ``failed_rows`` the row numbers to send again.

    >>> try:  # doctest: +SKIP
    ...     result = client.infer_batched("digits", x)
    ... except BatchError as exc:
    ...     kept, retry = exc.result, x[exc.failed_rows]
    """

    def __init__(
        self,
        failures: Sequence[ChunkFailure],
        *,
        rows: int,
        result: BatchResult | None,
        succeeded_rows: np.ndarray[Any, Any],
    ) -> None:
        self.failures = list(failures)
        self.rows = rows
        self.result = result
        self.succeeded_rows = succeeded_rows
        self.failed_rows: np.ndarray[Any, Any] = (
            np.concatenate([np.arange(f.start, f.stop) for f in self.failures])
            if self.failures
            else np.zeros(0, dtype=np.int64)
        )
        first = self.failures[0] if self.failures else None
        detail = f"; first: rows {first.start}-{first.stop - 1}: {first.error}" if first else ""
        self.message = (
            f"{len(self.failed_rows)} of {rows} rows failed in {len(self.failures)} "
            f"request(s){detail}"
        )
        super().__init__(self.message)
