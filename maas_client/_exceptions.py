"""The errors the client raises.

::

    MaasError
    ├── InputError                   inputs that do not fit the model (raised before sending)
    └── APIError                     anything about a call to the server
        ├── APIResponseValidationError   an answer the client cannot parse
        ├── APIConnectionError           no answer: refused, reset, DNS, TLS...
        │   └── APITimeoutError          no answer in time (or the call's deadline passed)
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

from typing import Any

import httpx

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
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


class APIResponseValidationError(APIError):
    """The server answered 2xx with something that is not what the protocol says it sends."""

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


class APIStatusError(APIError):
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
            message,
            request=response.request,
            body=body,
            request_id=request_id,
            attempts=attempts,
        )
        self.response = response
        self.status_code = response.status_code
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
