"""Plumbing shared by the pure ASGI middlewares: reading a header, answering with an error.

The middlewares sit on every request's path, so they work on the raw ASGI scope instead of
building Starlette ``Request`` objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "SCOPE_REQUEST_ID",
    "ASGIApp",
    "Message",
    "Receive",
    "Refusal",
    "Scope",
    "Send",
    "header",
    "send_error",
]


SCOPE_REQUEST_ID = "maas.request_id"
"""Scope key of the request id (bytes) that the access log gives the request, when it is on."""


class Refusal(NamedTuple):
    """An answer given instead of running the request: status, message, extra headers."""

    status: int
    message: str
    headers: Sequence[tuple[bytes, bytes]] = ()


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header; ``name`` in lower case (ASGI lowercases names)."""
    for key, value in scope["headers"]:
        if key == name:
            value_bytes: bytes = value
            return value_bytes
    return None


async def send_error(
    send: Send,
    status: int,
    message: str,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Answer ``{"error": message}`` with ``status``, as the routes' error handler does."""
    body = orjson.dumps({"error": message})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
