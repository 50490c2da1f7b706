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

from typing import Any

import httpx

from ._html import block, e, one_line

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APIStreamError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "EndpointNotSupportedError",
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
        return error_hint(self)

    def __repr__(self) -> str:
        return error_repr(self)

    def _repr_html_(self) -> str:
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


class EndpointNotSupportedError(NotFoundError):
    """404 from an optional endpoint of a model the server knows: the server does not have that
    endpoint (MLServer and KServe have no ``/config``), the model is there.

    ``endpoint`` names it (``"config"``), ``model`` and ``version`` the model asked about.
    """

    def __init__(
        self,
        message: str,
        *,
        response: httpx.Response,
        error: str,
        endpoint: str,
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
        self.endpoint = endpoint
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


# --- how errors show ------------------------------------------------------------------------


def error_hint(error: BaseException) -> str:
    """What to try after ``error``, in a sentence."""
    if isinstance(error, InputError):
        return "compare the inputs with client.models.get(model): names, shapes and datatypes"
    if isinstance(error, APITimeoutError):
        return "the server did not answer in time: raise timeout= or deadline=, or send less"
    if isinstance(error, APIConnectionError):
        url = error.request.url if error.request is not None else "the base URL"
        return f"is a server running at {url}? start one with 'maas serve', or check the URL"
    if isinstance(error, APIResponseValidationError):
        return "the server's answer is not the Open Inference Protocol: is the URL right?"
    if isinstance(error, EndpointNotSupportedError):
        return f"this server has no {error.endpoint} endpoint: ask what the server supports"
    if isinstance(error, APIStatusError):
        status = error.status_code
        hints = {
            400: "the server refused the request: check the inputs against client.models.get",
            401: "pass api_key= (or set MAAS_API_KEY) with a key the server knows",
            403: "the API key lacks the scope or the model: ask for one that has it",
            404: "check the name and version against client.models.list()",
            409: "the model is changing state: try again when it is loaded or unloaded",
            413: "the request is too large: send fewer rows, e.g. client.infer_batched(...)",
            422: "the server understood the request but cannot run it: see the message",
            429: "too many requests: slow down (retries already honour Retry-After)",
            503: "the server or model is not ready: check client.server.ready() and "
            "client.models.ready(model), or try later",
        }
        if status in hints:
            return hints[status]
        if status >= 500:
            return "the server failed: its log has the request id of this call"
    return "see the message"


def _status(error: BaseException) -> str:
    if isinstance(error, APIStatusError):
        return str(error.status_code)
    if isinstance(error, APITimeoutError):
        return "timeout"
    if isinstance(error, APIConnectionError):
        return "no connection"
    return "-"


def error_repr(error: MaasError) -> str:
    request_id = getattr(error, "request_id", None)
    rid = f" request_id={request_id}" if request_id else ""
    message = error.message if isinstance(error, APIError) else str(error)
    status = _status(error)
    status = "" if status == "-" else f" {status}"
    return one_line(f"<{type(error).__name__}{status}{rid}: {message}>")


def error_html(error: MaasError) -> str:
    facts = [
        ("status", e(_status(error))),
        ("message", e(error.error if isinstance(error, APIStatusError) else str(error))),
    ]
    if isinstance(error, APIError):
        facts.append(("request id", f"<code>{e(error.request_id or '-')}</code>"))
        facts.append(("attempts", e(error.attempts)))
    facts.append(("what to try", e(error_hint(error))))
    return block(f'<span style="color:#b00">{e(type(error).__name__)}</span>', facts)
