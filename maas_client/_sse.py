"""An incremental parser of server-sent events (the ``text/event-stream`` format of the WHATWG
HTML standard, section 9.2).

Bytes go in as they arrive, in pieces of any size; complete events come out:

>>> decoder = SSEDecoder()
>>> decoder.feed(b'event: error\\ndata: {"error"')
[]
>>> decoder.feed(b': "boom"}\\n\\n')
[ServerSentEvent(event='error', data='{"error": "boom"}', id=None, retry=None)]

Lines end with LF, CRLF or a lone CR (a CRLF split between two pieces is one line end).
``data:`` lines of one event are joined with LF, a line starting with ``:`` is a comment, a
field name without a colon has an empty value, one space after the colon is dropped, and an event
without data is not dispatched. Bytes that are not UTF-8 become U+FFFD. As the standard says, an
event still incomplete when the stream ends is dropped (:meth:`SSEDecoder.end`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["SSEDecoder", "ServerSentEvent"]

_BOM = b"\xef\xbb\xbf"
_MAX_PENDING = 16 * 1024 * 1024
"""The longest line accepted (a server that never ends a line would otherwise fill memory)."""


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event: its type (``message`` unless an ``event:`` field said otherwise), its
    data, and the last ``id:`` and ``retry:`` the stream set."""

    event: str
    data: str
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        """The data, parsed as JSON (raises :class:`orjson.JSONDecodeError`, a ``ValueError``)."""
        return orjson.loads(self.data)


class SSEDecoder:
    """Turns the bytes of an event stream, fed in pieces, into :class:`ServerSentEvent` objects."""

    def __init__(self) -> None:
        self._pending = b""
        self._skip_lf = False  # the last piece ended with CR: a LF that starts the next is its pair
        self._started = False
        self._event = ""
        self._data: list[str] = []
        self._last_id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[ServerSentEvent]:
        """The events that ``chunk`` completes (often none, or one)."""
        data = bytes(chunk)
        if self._skip_lf and data:
            self._skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
        if not self._started:
            data = self._pending + data
            self._pending = b""
            if len(data) < len(_BOM) and _BOM.startswith(data):
                self._pending = data
                return []
            self._started = True
            if data.startswith(_BOM):
                data = data[len(_BOM) :]
        elif self._pending:
            data = self._pending + data
            self._pending = b""
        if not data:
            return []
        # bytes.splitlines ends lines at LF, CR and CRLF only (unlike str.splitlines), and CR
        # and LF never occur inside a UTF-8 sequence, so each line can be decoded on its own.
        lines = data.splitlines(keepends=True)
        last = lines[-1]
        if last[-1:] not in (b"\n", b"\r"):
            self._pending = lines.pop()
            if len(self._pending) > _MAX_PENDING:
                raise ValueError("an event-stream line exceeds 16 MiB")
        elif last[-1:] == b"\r":
            self._skip_lf = True
        events: list[ServerSentEvent] = []
        for raw in lines:
            event = self._line(raw.rstrip(b"\r\n"))
            if event is not None:
                events.append(event)
        return events

    def end(self) -> list[ServerSentEvent]:
        """Call when the stream ends: an unfinished event is dropped, so this returns ``[]``; it
        exists so that callers say where the stream ends (and the decoder can be reused)."""
        self._pending = b""
        self._skip_lf = False
        self._event = ""
        self._data = []
        return []

    def _line(self, raw: bytes) -> ServerSentEvent | None:
        if not raw:
            return self._dispatch()
        if raw[:1] == b":":
            return None
        line = raw.decode("utf-8", errors="replace")
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" not in value:
                self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        event, self._event = self._event or "message", ""
        if not self._data:
            return None
        data, self._data = "\n".join(self._data), []
        return ServerSentEvent(event, data, self._last_id, self._retry)
