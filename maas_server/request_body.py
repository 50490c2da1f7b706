"""Reading request bodies: one reader for every route.

- :func:`read_body`: the raw bytes, refused with 413 past the size limit (as soon as the
  ``Content-Length`` or the bytes received say so), gzip/deflate inflated no further than it;
  with a :class:`BodyHold`, counted in the server-wide :class:`BodyBudget` of body bytes held
  at once (503 + ``Retry-After`` above it).
- :func:`read_json`: a JSON object. Where the route needs a body (``required``: inference,
  generate, the OpenAI routes) an empty body is a 400; where every field is optional (the
  repository routes) an empty body is ``{}``. Anything but a JSON object is a 400.
- :func:`read_message`: a JSON object validated by a wire model of :mod:`maas_wire`; a value the
  model refuses is a 400 that names the field.

>>> body = await read_message(request, GenerateRequest)
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from maas_wire.protocol import format_validation_error

from .batching import QueueFullError, retry_headers
from .errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError
from .stats import Rejections

__all__ = [
    "BodyBudget",
    "BodyHold",
    "body_budget",
    "body_limit",
    "holding_body",
    "is_empty",
    "parse_json_object",
    "read_body",
    "read_json",
    "read_message",
    "require_body",
    "upload_stream",
    "validate_message",
]

Message = TypeVar("Message", bound=BaseModel)

_PREALLOCATE_ABOVE = 64 * 1024
_RETRY_AFTER_SECONDS = 1.0


def body_limit(request: Request) -> int:
    """The server's ``max_body_bytes``."""
    limit: int = request.app.state.settings.max_body_bytes
    return limit


class BodyBudget:
    """The bytes of request bodies held at once, server-wide (``max_inflight_body_bytes``;
    0: no limit). Used on the event loop only, so it needs no lock.

    A request takes its ``Content-Length`` before it reads a byte (its chunks as they come
    when it has none, and its inflated size when it is compressed) and gives it back when its
    answer is ready. One that does not fit is refused with 503 and ``Retry-After``: the bodies
    in flight will be gone by then, and nothing of this one was read. Refusals count in the
    server's rejections (``maas_rejected_requests`` metric) as ``body_budget_full``.
    """

    def __init__(self, limit: int, rejections: Rejections | None = None) -> None:
        self.limit = limit
        self.held = 0
        self.rejections = rejections or Rejections()

    def take(self, size: int) -> None:
        if self.limit and self.held + size > self.limit:
            self.rejections.add("body_budget_full")
            raise QueueFullError(
                f"the server holds {self.held} bytes of request bodies, its limit is "
                f"{self.limit}; a body of {size} more bytes must wait, retry later",
                headers=retry_headers(_RETRY_AFTER_SECONDS),
            )
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size


class BodyHold:
    """What one request holds of the :class:`BodyBudget`; :meth:`release` gives it all back."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.size = 0

    def grow(self, size: int) -> None:
        self.budget.take(size)
        self.size += size

    def release(self) -> None:
        self.budget.give(self.size)
        self.size = 0


def body_budget(request: Request) -> BodyBudget:
    """The app's budget of request body bytes (made on first use)."""
    state = request.app.state
    budget: BodyBudget | None = getattr(state, "body_budget", None)
    if budget is None:
        budget = BodyBudget(state.settings.max_inflight_body_bytes, state.rejections)
        state.body_budget = budget
    return budget


@contextmanager
def holding_body(request: Request) -> Iterator[BodyHold]:
    """A hold on the body budget for the duration of the block."""
    hold = BodyHold(body_budget(request))
    try:
        yield hold
    finally:
        hold.release()


def _declared_length(request: Request, limit: int) -> int | None:
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    declared = declared.strip()
    if not (declared.isascii() and declared.isdigit()):
        shown = repr(declared) if len(declared) <= 40 else repr(declared[:40]) + "..."
        raise BadRequestError(f"Content-Length must be a non-negative integer, not {shown}")
    if len(declared) > 20 or int(declared) > limit:
        shown = declared if len(declared) <= 20 else f"a {len(declared)}-digit number of"
        raise PayloadTooLargeError(
            f"request body (Content-Length: {shown} bytes) exceeds the server's limit of "
            f"{limit} bytes"
        )
    return int(declared)


async def read_body(
    request: Request, limit: int, hold: BodyHold | None = None
) -> bytes | bytearray:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes.

    With a ``hold``, the bytes are taken from the server's body budget before they are read
    (503 when they do not fit). A body with a ``Content-Length`` above 64 KiB is read into one
    buffer of that size, so the body is held once, never as chunks and their join.
    """
    declared = _declared_length(request, limit)
    if hold is not None and declared:
        hold.grow(declared)
    if declared is not None and declared > _PREALLOCATE_ABOVE:
        body: bytes | bytearray = await _read_into(request, declared, hold)
    else:
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(
                    f"request body exceeds the server's limit of {limit} bytes"
                )
            if hold is not None and size > hold.size:
                hold.grow(size - hold.size)
            chunks.append(chunk)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        del chunks
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    inflated = _decompress(body, encoding, limit)
    if hold is not None:
        hold.grow(len(inflated))
    return inflated


async def _read_into(request: Request, declared: int, hold: BodyHold | None) -> bytearray:
    buffer = bytearray(declared)
    size = 0
    async for chunk in request.stream():
        end = size + len(chunk)
        if end > declared:
            raise BadRequestError(
                f"request body is longer than its Content-Length of {declared} bytes"
            )
        buffer[size:end] = chunk
        size = end
    if size < declared:
        raise BadRequestError(
            f"request body ended after {size} of its Content-Length of {declared} bytes"
        )
    return buffer


_MAX_GZIP_MEMBERS = 1024


def _decompress(body: bytes | bytearray, encoding: str, limit: int) -> bytes:
    """A gzip or deflate request body (tritonclient's request compression), inflated no further
    than ``limit`` bytes so that a small body cannot expand without bound. Every member of a
    gzip body is decoded, as ``gzip.decompress`` does (up to 1024 of them); data after a deflate
    stream is refused, never dropped."""
    if encoding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise UnsupportedMediaTypeError(
            f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or identity"
        )
    parts: list[bytes] = []
    size = 0
    rest = body
    for _ in range(_MAX_GZIP_MEMBERS):
        inflater = zlib.decompressobj(wbits=wbits)
        try:
            data = inflater.decompress(rest, limit + 1 - size)
        except zlib.error as exc:
            raise BadRequestError(f"request body is not valid {encoding} data: {exc}") from None
        size += len(data)
        if size > limit:
            raise PayloadTooLargeError(
                f"decompressed request body exceeds the server's limit of {limit} bytes"
            )
        if not inflater.eof:
            raise BadRequestError(f"request body is truncated {encoding} data")
        parts.append(data)
        rest = inflater.unused_data
        if not rest:
            return b"".join(parts)
        if encoding != "gzip":
            raise BadRequestError("request body has data after the end of its deflate stream")
    raise BadRequestError(f"request body has more than {_MAX_GZIP_MEMBERS} gzip members")


def is_empty(body: bytes | bytearray) -> bool:
    """No body, or only whitespace (checked without copying a large body)."""
    return not body or (len(body) <= 64 and not body.strip())


def require_body(body: bytes | bytearray) -> bytes | bytearray:
    """``body``; 400 when it is empty."""
    if is_empty(body):
        raise BadRequestError(
            "request body is empty, which is not valid JSON; this endpoint needs a JSON object"
        )
    return body


def parse_json_object(body: bytes | bytearray, *, required: bool) -> dict[str, Any]:
    """``body`` as a JSON object (see the module docstring for an empty body)."""
    if is_empty(body):
        if required:
            require_body(body)
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequestError("request body must be a JSON object")
    return data


async def read_json(request: Request, *, required: bool) -> dict[str, Any]:
    """The request body as a JSON object; 400 when it is not one (or is empty and
    ``required``), 413 when it is over the size limit."""
    with holding_body(request) as hold:
        body = await read_body(request, body_limit(request), hold)
        return parse_json_object(body, required=required)


def validate_message(data: dict[str, Any], model: type[Message]) -> Message:
    """``data`` checked by the wire model ``model``; 400 naming each field it refuses."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequestError(
            f"malformed {model.__name__}: {format_validation_error(exc)}"
        ) from None


async def read_message(request: Request, model: type[Message]) -> Message:
    """The request body (required) validated by ``model``."""
    return validate_message(await read_json(request, required=True), model)


async def upload_stream(request: Request, declared: int | None) -> AsyncIterator[bytes]:
    """The request body as it arrives, for uploads streamed to disk; a client that goes away
    mid-body, or sends less than its ``Content-Length``, is a 400."""
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise BadRequestError(
            f"upload interrupted: the client went away after {received} bytes"
        ) from None
    if declared is not None and received < declared:
        raise BadRequestError(
            f"upload interrupted: {received} of its Content-Length of {declared} bytes came"
        )
