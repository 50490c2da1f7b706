"""How an attempt's failure becomes the client's error: one table of statuses, one of
transport errors."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    EndpointNotSupportedError,
    InternalServerError,
    ModelNotFoundError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UnprocessableEntityError,
)

__all__ = [
    "STATUS_ERRORS",
    "TRANSPORT_ERRORS",
    "connection_error",
    "error_body",
    "make_status_error",
    "unsupported_endpoint",
]


def error_body(content: bytes | bytearray) -> tuple[Any, str | None]:
    """The parsed body and the server's message in it, if any."""
    if not content:
        return None, None
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        text = bytes(content).decode("utf-8", errors="replace").strip()
        return text, text[:2000] or None
    if isinstance(body, dict):
        for key in ("error", "detail", "message"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return body, value
            if value:
                return body, orjson.dumps(value).decode()
    return body, None


STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}
"""The error class of each status with one of its own; other 5xx are InternalServerError."""


def make_status_error(
    response: httpx.Response,
    content: bytes | bytearray,
    *,
    request_id: str | None,
    attempts: int,
    model: str | None = None,
    version: str | None = None,
) -> APIStatusError:
    """The :class:`APIStatusError` subclass for a non-2xx answer, carrying the server's message."""
    status = response.status_code
    body, error = error_body(content)
    reason = response.reason_phrase or "error"
    error = error or reason
    message = f"{status} {reason}: {error}"
    common: dict[str, Any] = {
        "response": response,
        "error": error,
        "body": body,
        "request_id": request_id,
        "attempts": attempts,
    }
    if status == 404 and model is not None:
        return ModelNotFoundError(message, model=model, version=version, **common)
    cls = STATUS_ERRORS.get(status)
    if cls is None:
        cls = InternalServerError if status >= 500 else APIStatusError
    return cls(message, **common)


TRANSPORT_ERRORS: tuple[tuple[type[httpx.TransportError], type[APIConnectionError], bool], ...] = (
    (httpx.ConnectTimeout, APITimeoutError, False),
    (httpx.PoolTimeout, APITimeoutError, False),
    (httpx.TimeoutException, APITimeoutError, True),
    (httpx.ConnectError, APIConnectionError, False),
    (httpx.TransportError, APIConnectionError, True),
)
"""Each httpx transport error (first match wins): the client's error class, and whether the
server may have received the request (``sent``, which decides retries of calls that are not
idempotent)."""


def connection_error(
    exc: httpx.TransportError,
    request: httpx.Request | None,
    *,
    request_id: str,
    attempts: int,
) -> APIConnectionError:
    """The client's error for an httpx transport failure, by :data:`TRANSPORT_ERRORS`."""
    for kind, cls, sent in TRANSPORT_ERRORS:  # noqa: B007 - the last row matches every error
        if isinstance(exc, kind):
            break
    detail = str(exc) or type(exc).__name__
    where = f"{request.method} {request.url}" if request is not None else "request"
    what = "timed out" if cls is APITimeoutError else "connection error"
    return cls(
        f"{what}: {where}: {detail}",
        request=request,
        request_id=request_id,
        attempts=attempts,
        sent=sent,
    )


def unsupported_endpoint(error: ModelNotFoundError, endpoint: str) -> EndpointNotSupportedError:
    """The error of a 404 from an optional endpoint of a model the server knows."""
    return EndpointNotSupportedError(
        f"the server has no {endpoint} endpoint (model {error.model!r} exists: its metadata "
        f"answers; {error.message})",
        response=error.response,
        error=error.error,
        endpoint=endpoint,
        model=error.model,
        version=error.version,
        body=error.body,
        request_id=error.request_id,
        attempts=error.attempts,
    )
