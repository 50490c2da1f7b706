"""The one pure ASGI middleware in front of the routes: limits, API keys, request ids and the
access log, on the path of every request.

They are one layer rather than three because each layer costs every request a coroutine and a
wrapper around ``send``; the decisions themselves live in their own modules
(:func:`~maas_server.limits.header_refusal`, :class:`~maas_server.auth.AccessControl`,
:class:`~maas_server.access_log.AccessLog`). In order, for each HTTP request:

1. a request id (when the access log is on), echoed in ``X-Request-ID``;
2. headers over the size limit: 431;
3. API keys: 401, 403 or 429 (when access control is on);
4. the route, with a deadline: when its answer has not started ``timeout_s`` after the request
   arrived, it is cancelled (leaving its queue) and the answer is 504; a started stream is not cut;
5. the access log line, whatever the answer was.

>>> app = RequestGuard(app, access=AccessControl(store), timeout_s=300)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import time

from .access_log import AccessLog
from .asgi import SCOPE_REQUEST_ID, ASGIApp, Message, Receive, Scope, Send, send_error
from .auth import AccessControl, ApiKey
from .limits import header_refusal
from .stats import Rejections

__all__ = ["RequestGuard"]


class RequestGuard:
    """Pure ASGI middleware; each part is off when its argument is None or 0."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        access: AccessControl | None = None,
        access_log: AccessLog | None = None,
        max_header_bytes: int = 0,
        timeout_s: float = 0.0,
        rejections: Rejections | None = None,
    ) -> None:
        self.app = app
        self.access = access
        self.access_log = access_log
        self.max_header_bytes = max_header_bytes
        self.timeout_s = timeout_s
        self.rejections = rejections or (access.rejections if access else Rejections())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        log = self.access_log
        start = time.perf_counter()
        request_id = log.request_id(scope) if log is not None else None
        if request_id is not None:
            scope[SCOPE_REQUEST_ID] = request_id  # for the answer to an unexpected error
        status = 0
        sent = 0
        started = False
        timer: asyncio.TimerHandle | None = None

        async def send_guarded(message: Message) -> None:
            nonlocal status, sent, started
            if message["type"] == "http.response.start":
                started = True
                if timer is not None:
                    timer.cancel()
                status = message["status"]
                if request_id is not None:
                    headers = [*message.get("headers", ()), (b"x-request-id", request_id)]
                    message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        key: ApiKey | None = None
        admitted = False
        try:
            refusal = header_refusal(scope, self.max_header_bytes)
            if refusal is not None:
                self.rejections.add("headers_too_large")
            elif self.access is not None:
                key, refusal = self.access.check(scope)
            if refusal is not None:
                await send_error(send_guarded, *refusal)
                return
            admitted = True
            if not self.timeout_s:
                await self.app(scope, receive, send_guarded)
                return
            task = asyncio.current_task()
            assert task is not None
            expired = False

            def expire() -> None:
                nonlocal expired
                if not started:
                    expired = True
                    task.cancel()

            timer = asyncio.get_running_loop().call_later(self.timeout_s, expire)
            try:
                await self.app(scope, receive, send_guarded)
            except asyncio.CancelledError:
                if not expired or started:
                    raise
                uncancel = getattr(task, "uncancel", None)  # Python 3.11+
                if uncancel is not None:
                    uncancel()
                self.rejections.add("deadline_exceeded")
                await send_error(
                    send_guarded,
                    504,
                    f"the server did not answer within its request deadline of "
                    f"{self.timeout_s:g} s",
                )
            finally:
                timer.cancel()
        except BaseException:
            status = status or 500
            raise
        finally:
            if admitted and key is not None:
                AccessControl.release(key)
            if log is not None:
                log.write(scope, request_id or b"", status, sent, time.perf_counter() - start)
