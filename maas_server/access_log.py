"""One log line per request on logger ``maas_server.access``, as text or JSON, and request ids.

Each request gets the id its ``X-Request-ID`` header carries (when it is a reasonable token) or a
new one, and the answer carries it back in ``X-Request-ID``. The line names the API key by its
name (never the key), the model and version, the status, bytes in and out, and the latency::

    127.0.0.1:52144 "POST /v2/models/mlp/infer HTTP/1.1" 200 in=296 out=151 1.42ms id=9f2c... key=ci model=mlp version=-

``maas serve`` turns uvicorn's own access log off when this one is on.
"""  # noqa: E501

from __future__ import annotations

import logging
import os
import re
import time
from typing import Literal

import orjson

from .asgi import ASGIApp, Message, Receive, Scope, Send, header
from .auth import SCOPE_KEY, SCOPE_MODEL, path_target

__all__ = ["ACCESS_LOGGER", "AccessLogMiddleware"]

ACCESS_LOGGER = "maas_server.access"
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:/+=@\-]{1,128}$")


class AccessLogMiddleware:
    """Pure ASGI middleware: request ids in and out, and the access log line."""

    def __init__(
        self,
        app: ASGIApp,
        format: Literal["text", "json"] = "text",
        logger: logging.Logger | None = None,
    ) -> None:
        self.app = app
        self.json = format == "json"
        self.logger = logger or logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        given = header(scope, b"x-request-id")
        request_id = given if given is not None and _REQUEST_ID.match(given) else None
        if request_id is None:
            request_id = os.urandom(12).hex().encode()
        id_header = (b"x-request-id", request_id)
        status = 0
        sent = 0

        async def send_logged(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), id_header]}
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        except BaseException:
            status = status or 500
            raise
        finally:
            if self.logger.isEnabledFor(logging.INFO):
                self._log(scope, request_id.decode(), status, sent, time.perf_counter() - start)

    def _log(self, scope: Scope, request_id: str, status: int, sent: int, seconds: float) -> None:
        key = scope.get(SCOPE_KEY)
        model, version = path_target(scope["path"])
        model = scope.get(SCOPE_MODEL, model)
        length = header(scope, b"content-length")
        received = int(length) if length is not None and length.isdigit() else 0
        client = scope.get("client")
        peer = f"{client[0]}:{client[1]}" if client else "-"
        if self.json:
            line = orjson.dumps(
                {
                    "request_id": request_id,
                    "client": peer,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "bytes_in": received,
                    "bytes_out": sent,
                    "duration_ms": round(seconds * 1000, 3),
                    "key": key.name if key is not None else None,
                    "model": model,
                    "version": version,
                }
            ).decode()
        else:
            line = (
                f'{peer} "{scope["method"]} {_printable(scope["path"])} '
                f'HTTP/{scope.get("http_version", "1.1")}" {status} in={received} out={sent} '
                f"{seconds * 1000:.2f}ms id={request_id} "
                f"key={key.name if key is not None else '-'} "
                f"model={_printable(model) if model else '-'} "
                f"version={_printable(version) if version else '-'}"
            )
        self.logger.info(line)


def _printable(text: str) -> str:
    """Paths and names as one safe line of text (no forged log lines through ``%0A``)."""
    if text.isprintable() and '"' not in text and " " not in text:
        return text
    return text.encode("unicode_escape").decode("ascii").replace('"', '\\"').replace(" ", "\\x20")
