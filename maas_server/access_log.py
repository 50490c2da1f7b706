"""One log line per request on logger ``maas_server.access``, as text or JSON, and request ids.

Each request gets the id its ``X-Request-ID`` header carries (when it is a reasonable token) or a
new one, and the answer carries it back in ``X-Request-ID``. The line names the API key by its
name (never the key), the model and version, the status, bytes in and out, and the latency::

    2024-05-01T12:00:00.123Z 127.0.0.1:52144 "POST /v2/models/mlp/infer HTTP/1.1" 200 in=296 out=151 1.42ms id=9f2c... key=ci model=mlp version=-

Each line carries its own time (UTC), so the logger's handler needs no time of its own.
``maas serve`` gives the logger an :class:`AccessLogHandler` (:func:`configure_access_logger`),
which writes the lines through a buffer flushed 0.2 s after a line arrives, and turns uvicorn's own access log
off. When that handler is the logger's only way out, the middleware hands it each request's
fields directly, without building a ``LogRecord``, and the line is formatted when the buffer is
flushed: the access log is on the path of every request, its formatting need not be.
"""  # noqa: E501

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import threading
import time
from collections import deque
from typing import Literal, NamedTuple, TextIO

import orjson

from .asgi import Scope, header
from .auth import SCOPE_KEY, SCOPE_MODEL, path_target, route_path

__all__ = [
    "ACCESS_LOGGER",
    "AccessLog",
    "AccessLogHandler",
    "configure_access_logger",
]

ACCESS_LOGGER = "maas_server.access"
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:/+=@\-]{1,128}$")


class _Clock:
    """``2024-05-01T12:00:00.123Z`` for a time, formatting the seconds once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((when - second) * 1000):03d}Z"


class _Entry(NamedTuple):
    """What the line of one request says, before it is formatted."""

    json: bool
    time: float
    request_id: bytes
    client: tuple[str, int] | None
    method: str
    path: str
    http_version: str
    status: int
    content_length: bytes | None
    sent: int
    seconds: float
    key: str | None
    model: str | None
    route: str

    def format(self, clock: _Clock) -> str:
        model, version = path_target(self.route)
        model = self.model or model
        length = self.content_length
        ok = length is not None and 0 < len(length) <= 18 and length.isdigit()
        received = int(length) if ok and length is not None else 0
        peer = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        if self.json:
            return orjson.dumps(
                {
                    "time": clock.format(self.time),
                    "request_id": self.request_id.decode(),
                    "client": peer,
                    "method": self.method,
                    "path": self.path,
                    "status": self.status,
                    "bytes_in": received,
                    "bytes_out": self.sent,
                    "duration_ms": round(self.seconds * 1000, 3),
                    "key": self.key,
                    "model": model,
                    "version": version,
                }
            ).decode()
        return (
            f'{clock.format(self.time)} {peer} "{self.method} {_printable(self.path)} '
            f'HTTP/{self.http_version}" {self.status} in={received} out={self.sent} '
            f"{self.seconds * 1000:.2f}ms id={self.request_id.decode()} "
            f"key={self.key or '-'} "
            f"model={_printable(model) if model else '-'} "
            f"version={_printable(version) if version else '-'}"
        )


class AccessLogHandler(logging.Handler):
    """Writes each record's message as one line into a buffer, flushed ``flush_interval``
    seconds after the first line waiting in it (by the event loop that wrote it, see
    :meth:`schedule_flush`, so that no thread competes with the loop for the interpreter; a
    background thread flushes what other threads write, every few intervals), and by
    :meth:`close` at exit: one write for many lines."""

    def __init__(self, stream: TextIO | None = None, flush_interval: float = 0.2) -> None:
        super().__init__()
        self.flush_interval = flush_interval
        self._scheduled = False
        self._out: TextIO = stream or sys.stderr
        self._lines: deque[str | _Entry] = deque()  # append, popleft: atomic, no lock needed
        self._clock = _Clock()
        self._flush_lock = threading.Lock()
        self._stopped = threading.Event()  # not `_closed`: logging.Handler.close sets that to True
        self._flusher = threading.Thread(
            target=self._flush_every,
            args=(max(1.0, 5 * flush_interval),),
            name="maas-access-log",
            daemon=True,
        )
        self._flusher.start()

    def write_line(self, line: str | _Entry) -> None:
        """Queue a line, or a request's fields to be formatted into one when flushed."""
        self._lines.append(line)

    def schedule_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Have ``loop`` flush the buffer ``flush_interval`` seconds from now, unless it will."""
        if not self._scheduled:
            self._scheduled = True
            loop.call_later(self.flush_interval, self._flush_from_loop)

    def _flush_from_loop(self) -> None:
        self._scheduled = False
        self.flush()

    def handle(self, record: logging.LogRecord) -> bool:
        if not self.filter(record):
            return False
        self.write_line(record.getMessage())
        return True

    def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover - handle() writes
        self.write_line(record.getMessage())

    def flush(self) -> None:
        with self._flush_lock:
            lines: list[str] = []
            pop = self._lines.popleft
            while True:
                try:
                    line = pop()
                except IndexError:
                    break
                lines.append(line if isinstance(line, str) else line.format(self._clock))
            if lines:
                lines.append("")
                self._out.write("\n".join(lines))
                self._out.flush()

    def _flush_every(self, interval: float) -> None:
        while not self._stopped.wait(interval):
            self.flush()

    def close(self) -> None:
        self._stopped.set()
        self.flush()
        super().close()


def configure_access_logger(
    stream: TextIO | None = None, flush_interval: float = 0.2
) -> logging.Logger:
    """Send the access log to ``stream`` (stderr) as bare lines, apart from other logs."""
    logger = logging.getLogger(ACCESS_LOGGER)
    for old in logger.handlers:
        old.close()
    logger.handlers[:] = [AccessLogHandler(stream, flush_interval)]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


class AccessLog:
    """Request ids and the access log line of each request, for
    :class:`~maas_server.guard.RequestGuard`: :meth:`request_id` when a request arrives,
    :meth:`write` when it is done."""

    def __init__(
        self, format: Literal["text", "json"] = "text", logger: logging.Logger | None = None
    ) -> None:
        self.json = format == "json"
        self.logger = logger or logging.getLogger(ACCESS_LOGGER)
        self._clock = _Clock()
        # Ids made here: a random prefix per app and a counter (unique, and no system call).
        self._prefix = os.urandom(8).hex().encode()
        self._count = 0

    def request_id(self, scope: Scope) -> bytes:
        """The id the request's ``X-Request-ID`` carries when it is a reasonable token, else a
        new one."""
        given = header(scope, b"x-request-id")
        if given is not None and _REQUEST_ID.match(given):
            return given
        self._count += 1
        return b"%s%08x" % (self._prefix, self._count & 0xFFFFFFFF)

    def write(
        self, scope: Scope, request_id: bytes, status: int, sent: int, seconds: float
    ) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        key = scope.get(SCOPE_KEY)
        entry = _Entry(
            self.json,
            time.time(),
            request_id,
            scope.get("client"),
            scope["method"],
            scope["path"],
            scope.get("http_version", "1.1"),
            status,
            header(scope, b"content-length"),
            sent,
            seconds,
            key.name if key is not None else None,
            scope.get(SCOPE_MODEL),
            route_path(scope),
        )
        handlers = logger.handlers
        if (
            len(handlers) == 1
            and type(handlers[0]) is AccessLogHandler
            and not logger.propagate
            and not logger.filters
            and not handlers[0].filters
        ):
            handler = handlers[0]
            handler.write_line(entry)
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop here: the handler's thread flushes
                return
            handler.schedule_flush(loop)
        else:
            logger.info(entry.format(self._clock))


def _printable(text: str) -> str:
    """Paths and names as one safe line of text (no forged log lines through ``%0A``)."""
    if text.isprintable() and '"' not in text and " " not in text:
        return text
    return text.encode("unicode_escape").decode("ascii").replace('"', '\\"').replace(" ", "\\x20")
