"""Limits on what one request may ask of the server, beyond the body size (``read_body``, 413).

- :class:`LimitsMiddleware`: request headers larger than ``max_header_bytes`` get 431; a request
  whose answer has not started ``timeout_s`` after it arrived is cancelled (its queue slot freed)
  and gets 504. Once an answer has started (a stream), the deadline no longer applies.
- :func:`check_tensor_limits`: input tensors with more than ``max_elements`` elements, or BYTES
  elements longer than ``max_element_bytes``, get 413 before anything is queued or run. Decoding
  itself cannot allocate more than the body holds (fixed-size binary tensors are views of the
  body), so checking the decoded arrays bounds what reaches a model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np

from .asgi import ASGIApp, Message, Receive, Scope, Send, send_error
from .errors import PayloadTooLargeError
from .stats import Rejections

__all__ = ["LimitsMiddleware", "check_tensor_limits"]


class LimitsMiddleware:
    """Pure ASGI middleware: header size (431) and the request deadline (504)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_header_bytes: int,
        timeout_s: float,
        rejections: Rejections | None = None,
    ) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes
        self.timeout_s = timeout_s
        self.rejections = rejections or Rejections()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.max_header_bytes:
            size = sum(len(k) + len(v) + 4 for k, v in scope["headers"])
            if size > self.max_header_bytes:
                self.rejections.add("headers_too_large")
                await send_error(
                    send,
                    431,
                    f"request headers of {size} bytes exceed the server's limit of "
                    f"{self.max_header_bytes} bytes",
                )
                return
        if not self.timeout_s:
            await self.app(scope, receive, send)
            return
        await self._with_deadline(scope, receive, send)

    async def _with_deadline(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        started = False
        expired = False

        def expire() -> None:
            nonlocal expired
            if not started:
                expired = True
                task.cancel()

        handle = asyncio.get_running_loop().call_later(self.timeout_s, expire)

        async def send_started(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                handle.cancel()
            await send(message)

        try:
            await self.app(scope, receive, send_started)
        except asyncio.CancelledError:
            if not expired or started:
                raise
            uncancel = getattr(task, "uncancel", None)  # Python 3.11+
            if uncancel is not None:
                uncancel()
            self.rejections.add("deadline_exceeded")
            await send_error(
                send,
                504,
                f"the server did not answer within its request deadline of {self.timeout_s:g} s",
            )
        finally:
            handle.cancel()


def check_tensor_limits(
    tensors: Mapping[str, np.ndarray[Any, Any]], max_elements: int, max_element_bytes: int
) -> None:
    """413 when an input tensor is over the element or BYTES element size limit (0: no limit)."""
    for name, array in tensors.items():
        if max_elements and array.size > max_elements:
            raise PayloadTooLargeError(
                f"input {name!r} has {array.size} elements; the server's limit is {max_elements}"
            )
        if max_element_bytes and array.dtype == object and array.size:
            longest = max(len(element) for element in array.flat)
            if longest > max_element_bytes:
                raise PayloadTooLargeError(
                    f"input {name!r} has a BYTES element of {longest} bytes; the server's limit "
                    f"is {max_element_bytes}"
                )
