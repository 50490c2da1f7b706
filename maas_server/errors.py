"""The server's errors: one base class carrying an HTTP status, turned into ``{"error": ...}``.

The data plane raises these without knowing about HTTP requests; the routes turn them into
answers. Status codes follow Triton's map: not found 404, unavailable 503, unsupported 501,
internal 500, everything else 400.
"""

from __future__ import annotations

__all__ = [
    "BadRequestError",
    "ConflictError",
    "ForbiddenError",
    "InsufficientStorageError",
    "InternalError",
    "ModelNotFoundError",
    "ModelUnavailableError",
    "PayloadTooLargeError",
    "ServerError",
    "UnsupportedError",
    "UnsupportedMediaTypeError",
]


class ServerError(Exception):
    """An error whose message is meant for the caller; ``status_code`` is the HTTP status."""

    status_code = 400

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequestError(ServerError):
    """The request is malformed or does not fit the model (400)."""

    status_code = 400


class ForbiddenError(ServerError):
    """The API key is valid but may not do this, or not with this model (403)."""

    status_code = 403


class ModelNotFoundError(ServerError):
    """No such model, or no such version of it (404)."""

    status_code = 404


class ConflictError(ServerError):
    """The request conflicts with the repository's state: the version exists, or deleting it
    would leave the model with nothing to serve (409)."""

    status_code = 409


class InsufficientStorageError(ServerError):
    """The disk is full: nothing was kept of the request (507)."""

    status_code = 507


class PayloadTooLargeError(ServerError):
    """The request body is larger than the configured limit (413)."""

    status_code = 413


class UnsupportedMediaTypeError(ServerError):
    """The request body is encoded in a way the server does not read (415)."""

    status_code = 415


class UnsupportedError(ServerError):
    """The request asks for something this server does not implement (501)."""

    status_code = 501


class ModelUnavailableError(ServerError):
    """The model exists but is not ready: loading, unloaded or failed to load (503)."""

    status_code = 503


class InternalError(ServerError):
    """A genuine fault of the server or of the model's runtime (500)."""

    status_code = 500
