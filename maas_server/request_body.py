"""Reading request bodies: one reader for every route.

- :func:`read_body`: the raw bytes, refused with 413 past the size limit (as soon as the
  ``Content-Length`` or the bytes received say so), gzip/deflate inflated no further than it.
- :func:`read_json`: a JSON object. Where the route needs a body (``required``: inference,
  generate, the OpenAI routes) an empty body is a 400; where every field is optional (the
  repository routes) an empty body is ``{}``. Anything but a JSON object is a 400.
- :func:`read_message`: a JSON object validated by a wire model of :mod:`maas_wire`; a value the
  model refuses is a 400 that names the field.

>>> body = await read_message(request, GenerateRequest)
"""

from __future__ import annotations

import zlib
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from maas_wire.protocol import format_validation_error

from .errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError

__all__ = [
    "body_limit",
    "is_empty",
    "parse_json_object",
    "read_body",
    "read_json",
    "read_message",
    "require_body",
    "validate_message",
]

Message = TypeVar("Message", bound=BaseModel)


def body_limit(request: Request) -> int:
    """The server's ``max_body_bytes``."""
    limit: int = request.app.state.settings.max_body_bytes
    return limit


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    known = declared is not None and declared.isascii() and declared.isdigit()
    if known and (len(declared) > 20 or int(declared) > limit):  # type: ignore[arg-type]
        raise PayloadTooLargeError(
            f"request body of {declared} bytes exceeds the server's limit of {limit} bytes"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body exceeds the server's limit of {limit} bytes")
        chunks.append(chunk)
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    del chunks
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    return _decompress(body, encoding, limit)


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip or deflate request body (tritonclient's request compression), inflated no further
    than ``limit`` bytes so that a small body cannot expand without bound."""
    if encoding == "gzip":
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        inflater = zlib.decompressobj()
    else:
        raise UnsupportedMediaTypeError(
            f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or identity"
        )
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequestError(f"request body is not valid {encoding} data: {exc}") from None
    if len(data) > limit:
        raise PayloadTooLargeError(
            f"decompressed request body exceeds the server's limit of {limit} bytes"
        )
    if not inflater.eof:
        raise BadRequestError(f"request body is truncated {encoding} data")
    return data


def is_empty(body: bytes) -> bool:
    """No body, or only whitespace (checked without copying a large body)."""
    return not body or (len(body) <= 64 and not body.strip())


def require_body(body: bytes) -> bytes:
    """``body``; 400 when it is empty."""
    if is_empty(body):
        raise BadRequestError(
            "request body is empty, which is not valid JSON; this endpoint needs a JSON object"
        )
    return body


def parse_json_object(body: bytes, *, required: bool) -> dict[str, Any]:
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
    return parse_json_object(await read_body(request, body_limit(request)), required=required)


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
