"""HTTP/1.1 framing for the lean transports: the request head, and a response parser on llhttp.

Responses are parsed by ``httptools`` (llhttp, the parser of Node.js, also under uvicorn): status
line, header syntax, ``Content-Length`` validation (digits only, no conflicting duplicates, no
overflow), ``Transfer-Encoding`` and chunked decoding with extensions and trailers, interim 1xx
answers. What this module adds is what llhttp leaves to its caller:

- a bound on the head: :data:`MAX_HEAD` bytes (interim heads included), then
  :class:`httpx.RemoteProtocolError`;
- the framing of the body (``none`` for HEAD, 204 and 304; ``length``; ``chunked``; ``close``
  when it ends with the connection) and whether the connection may be reused, read when the head
  is complete;
- data after the end of the answer marks the connection as not reusable instead of failing an
  answer that was complete.

A ``Content-Length`` body is read by the transports themselves into one buffer (no copy per
chunk), which never grows ahead of the bytes that fill it by more than :data:`PREALLOCATE`.
"""

from __future__ import annotations

from typing import Literal

import httptools
import httpx

from ._transport_errors import transport_error

__all__ = [
    "MAX_HEAD",
    "PREALLOCATE",
    "ResponseHead",
    "ResponseParser",
    "body_buffer",
    "grow",
    "request_head",
]

MAX_HEAD = 64 * 1024
PREALLOCATE = 4 * 1024 * 1024

Framing = Literal["none", "length", "chunked", "close"]
_CRLF = b"\r\n"
_NO_BODY_STATUSES = frozenset({204, 304})


def request_head(request: httpx.Request) -> bytes:
    """The request line and headers; refuses CR or LF inside a header (header injection)."""
    raw = request.headers.raw
    head = b"".join(
        [
            b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), request.url.raw_path),
            *[b"%s: %s\r\n" % item for item in raw],
            _CRLF,
        ]
    )
    # One line per header plus the request line and the blank line: any other CR or LF came
    # from inside a name or a value.
    lines = len(raw) + 2
    if head.count(b"\n") != lines or head.count(b"\r") != lines:
        bad = next(n for n, v in raw if b"\r" in n + v or b"\n" in n + v)
        raise httpx.LocalProtocolError(f"invalid character in header {bad!r}")
    return head


def body_buffer(length: int, start: list[bytes]) -> tuple[bytearray, int]:
    """A buffer for a ``length``-byte body whose first bytes are ``start``: at most
    :data:`PREALLOCATE` bytes ahead of them. Returns it and how many bytes it holds."""
    have = sum(len(part) for part in start)
    buffer = bytearray(min(length, max(have, PREALLOCATE)))
    position = 0
    for part in start:
        buffer[position : position + len(part)] = part
        position += len(part)
    return buffer, have


def grow(buffer: bytearray, length: int) -> bytearray:
    """``buffer`` (full) made larger, doubling up to ``length``: the same object when it can be
    resized in place, a copy when a view of it is still alive somewhere."""
    size = min(length, max(2 * len(buffer), PREALLOCATE))
    try:
        buffer.extend(bytes(size - len(buffer)))
        return buffer
    except BufferError:
        larger = bytearray(size)
        larger[: len(buffer)] = buffer
        return larger


class ResponseHead:
    """A final answer's status and headers, and how its body is framed."""

    __slots__ = ("framing", "headers", "keep_alive", "length", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        framing: Framing,
        length: int,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.keep_alive = keep_alive
        self.framing: Framing = framing
        self.length = length  # of a "length" body; 0 otherwise

    def response(self, stream: httpx.SyncByteStream | httpx.AsyncByteStream) -> httpx.Response:
        return httpx.Response(
            self.status,
            headers=self.headers,
            stream=stream,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": self.reason},
        )


class _Trailing(Exception):
    """Raised inside llhttp's callbacks to stop at a second answer nobody asked for."""


class ResponseParser:
    """The responses of one connection, fed as they arrive; :meth:`begin` before each.

    After :meth:`feed`: :attr:`head` once the final head is complete; :attr:`parts`, the body
    bytes llhttp has framed so far (take them with :meth:`take`); :attr:`complete` once the
    answer has ended; :attr:`trailing` when bytes followed its end (the connection must then
    not be reused). Malformed input raises :class:`httpx.RemoteProtocolError`.

    The llhttp parser is kept from one answer to the next when the previous one ended cleanly,
    and made anew otherwise (after :meth:`detach`, an error, or an answer to HEAD).
    """

    __slots__ = (
        "_encoding",
        "_head_request",
        "_headers",
        "_interim",
        "_parser",
        "_reason",
        "_size",
        "body_bytes",
        "complete",
        "fed",
        "head",
        "parts",
        "trailing",
    )

    def __init__(self, head_request: bool = False) -> None:
        self._parser: httptools.HttpResponseParser | None = None
        self.begin(head_request)

    def begin(self, head_request: bool) -> None:
        """Get ready for the answer to the next request (``head_request``: a HEAD)."""
        self._head_request = head_request
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._interim = False
        self._size: bytes | None = None
        self._encoding: bytes | None = None
        self.head: ResponseHead | None = None
        self.parts: list[bytes] = []
        self.body_bytes = 0  # body bytes framed by llhttp so far
        self.complete = False
        self.trailing = False
        self.fed = 0  # bytes fed before the final head was complete
        if self._parser is None:
            self._parser = httptools.HttpResponseParser(self)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        parser = self._parser
        if parser is None:  # the caller reads the body itself, or the answer has ended
            if len(data):
                self.trailing = True
            return
        if self.head is None:
            self.fed += len(data)
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parser = None  # the parser refers to this object: no cycle left behind
            if self.complete:
                self.trailing = True
                return
            raise transport_error(exc, "read", "malformed response") from None
        if self.head is None and self.fed > MAX_HEAD:
            self._parser = None
            raise httpx.RemoteProtocolError(f"the response head exceeds {MAX_HEAD // 1024} KiB")
        if self.complete and (self._head_request or self.trailing):
            self._parser = None  # llhttp expects a body that will not come, or saw garbage

    def detach(self) -> None:
        """Stop parsing: the caller reads the rest of a ``length`` body itself, or closes the
        connection (the llhttp parser refers to this object: no cycle is left behind)."""
        self._parser = None

    def take(self) -> list[bytes]:
        parts, self.parts = self.parts, []
        return parts

    # llhttp's callbacks

    def on_message_begin(self) -> None:
        if self.complete:  # a second answer nobody asked for
            raise _Trailing

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head is None:  # after the head: a trailer, ignored
            self._headers.append((name, value))
            size = len(name)
            if size == 14 and name.lower() == b"content-length":
                self._size = value
            elif size == 17 and name.lower() == b"transfer-encoding":
                self._encoding = value

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        if status < 200 and status != 101:  # an interim answer (100 Continue): the real one follows
            self._interim = True
            self._headers = []
            self._reason = b""
            self._size = self._encoding = None
            return
        keep_alive = parser.should_keep_alive()  # valid here; reset at the end of the message
        framing: Framing
        length = 0
        encoding = self._encoding
        if self._head_request or status in _NO_BODY_STATUSES:
            framing = "none"
            self.complete = True
        elif encoding is not None:
            chunked = encoding.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
            framing = "chunked" if chunked else "close"
        elif self._size is not None:
            framing, length = "length", int(self._size)  # llhttp checked it: digits, no overflow
        else:
            framing = "close"
        if framing == "close":
            keep_alive = False
        self.head = ResponseHead(status, self._reason, self._headers, keep_alive, framing, length)

    def on_body(self, body: bytes) -> None:
        if self.complete:
            self.trailing = True
        else:
            self.parts.append(body)
            self.body_bytes += len(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        else:
            self.complete = True
