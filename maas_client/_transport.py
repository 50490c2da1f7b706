"""A lean HTTP/1.1 transport for plain ``http://`` servers: the default of both clients.

Per call, httpx's own transport (httpcore and h11) costs about twice the client CPU of
``tritonclient.http`` on small requests, most of it in per-event bookkeeping, and writes the
request head and body in separate system calls. This transport speaks the subset of HTTP/1.1 an
inference client needs, with keep-alive connections:

- one ``send`` for the head and a small body; large bodies go out chunk by chunk from the
  tensors' memory (:class:`~maas_client._base.BodyStream`), never joined;
- a ``Content-Length`` body is received straight into one preallocated buffer (``recv_into``,
  or ``asyncio.BufferedProtocol``) and handed over without another copy; chunked and
  close-delimited bodies are read as they come;
- errors and timeouts are httpx's exceptions (``ConnectError``, ``ReadTimeout``...), so the
  client's retry decisions do not depend on the transport.

``https://`` URLs, proxies (httpx mounts them separately) and anything else go through httpx's
own transports: pass ``http_client=httpx.Client(...)`` to use httpx for everything.
The asynchronous transport runs on asyncio; under another event loop it hands requests to
:class:`httpx.AsyncHTTPTransport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
import urllib.request
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator

import httpx

__all__ = ["AsyncLeanTransport", "LeanTransport", "proxies_configured"]

_MAX_HEAD = 64 * 1024
_RECV = 64 * 1024
_SMALL_BODY = 64 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})
_CRLF = b"\r\n"


def proxies_configured() -> bool:
    """Whether the environment names an HTTP proxy (``HTTP_PROXY``, ``ALL_PROXY``...)."""
    return bool(urllib.request.getproxies())


# --- request ---------------------------------------------------------------------------------


def _request_head(request: httpx.Request) -> bytes:
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


def _is_chunked(request: httpx.Request) -> bool:
    return "content-length" not in request.headers and (
        request.headers.get("transfer-encoding", "").lower() == "chunked"
    )


def _body_chunks(request: httpx.Request) -> list[bytes]:
    stream = request.stream
    assert isinstance(stream, Iterable)
    return [chunk for chunk in stream if len(chunk)]


async def _abody_chunks(request: httpx.Request) -> list[bytes]:
    stream = request.stream
    if isinstance(stream, httpx.SyncByteStream):  # in memory already (bytes, BodyStream)
        return [chunk for chunk in stream if len(chunk)]
    assert isinstance(stream, httpx.AsyncByteStream)
    return [chunk async for chunk in stream if len(chunk)]


def _frame(chunks: list[bytes], chunked: bool) -> list[bytes]:
    if not chunked:
        return chunks
    framed: list[bytes] = []
    for chunk in chunks:
        framed += [b"%x\r\n" % len(chunk), chunk, _CRLF]
    framed.append(b"0\r\n\r\n")
    return framed


def _timeouts(request: httpx.Request) -> dict[str, float | None]:
    timeout: dict[str, float | None] = request.extensions.get("timeout", {})
    return timeout


# --- response head ---------------------------------------------------------------------------


class _Head:
    """A parsed status line and header block, and how the body that follows is framed."""

    __slots__ = ("headers", "keep_alive", "length", "mode", "reason", "status")

    def __init__(self, block: bytes, method: str) -> None:
        lines = block.split(_CRLF)
        status_line = lines[0]
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise httpx.RemoteProtocolError(f"malformed status line {status_line[:100]!r}")
        self.status = int(parts[1])
        self.reason = parts[2] if len(parts) > 2 else b""
        headers: list[tuple[bytes, bytes]] = []
        length: int | None = None
        self.length: int | None
        chunked = False
        connection = b""
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(b":")
            if not sep:
                raise httpx.RemoteProtocolError(f"malformed header line {line[:100]!r}")
            name = name.strip()
            value = value.strip()
            headers.append((name, value))
            lowered = name.lower()
            if lowered == b"content-length":
                if not value.isdigit() or (length is not None and int(value) != length):
                    raise httpx.RemoteProtocolError(f"invalid Content-Length {value[:40]!r}")
                length = int(value)
            elif lowered == b"transfer-encoding":
                chunked = value.lower().endswith(b"chunked")
            elif lowered == b"connection":
                connection = value.lower()
        self.headers = headers
        self.keep_alive = parts[0] == b"HTTP/1.1" and b"close" not in connection
        if method == "HEAD" or self.status in _NO_BODY_STATUSES or self.status < 200:
            self.mode, self.length = "length", 0
        elif chunked:
            self.mode, self.length = "chunked", None
        elif length is not None:
            self.mode, self.length = "length", length
        else:
            self.mode, self.length = "close", None
            self.keep_alive = False


def _response(head: _Head, stream: httpx.SyncByteStream | httpx.AsyncByteStream) -> httpx.Response:
    return httpx.Response(
        head.status,
        headers=head.headers,
        stream=stream,
        extensions={"http_version": b"HTTP/1.1", "reason_phrase": head.reason},
    )


class _ChunkedDecoder:
    """Incremental decoder of chunked transfer coding over bytes fed to it."""

    def __init__(self) -> None:
        self.pending = bytearray()
        self.remaining = 0  # bytes left in the current chunk (+2 for its CRLF when > 0)
        self.done = False
        self._trailers = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        self.pending += data
        out: list[bytes] = []
        while not self.done:
            if self._trailers:
                end = self.pending.find(b"\r\n")
                if end < 0:
                    break
                line = bytes(self.pending[:end])
                del self.pending[: end + 2]
                if not line:
                    self.done = True
                continue
            if self.remaining:
                if len(self.pending) < self.remaining:
                    if self.remaining > 2 and len(self.pending) > 0:
                        take = min(len(self.pending), self.remaining - 2)
                        out.append(bytes(self.pending[:take]))
                        del self.pending[:take]
                        self.remaining -= take
                    break
                data_len = self.remaining - 2
                if data_len:
                    out.append(bytes(self.pending[:data_len]))
                if self.pending[data_len : self.remaining] != b"\r\n":
                    raise httpx.RemoteProtocolError("malformed chunked body: missing CRLF")
                del self.pending[: self.remaining]
                self.remaining = 0
                continue
            end = self.pending.find(b"\r\n")
            if end < 0:
                if len(self.pending) > 1024:
                    raise httpx.RemoteProtocolError("malformed chunked body: chunk size line")
                break
            size_text = bytes(self.pending[:end]).split(b";", 1)[0].strip()
            del self.pending[: end + 2]
            try:
                size = int(size_text, 16)
            except ValueError:
                raise httpx.RemoteProtocolError(
                    f"malformed chunked body: chunk size {size_text[:20]!r}"
                ) from None
            if size == 0:
                self._trailers = True
            else:
                self.remaining = size + 2
        return [c for c in out if c]


# --- the blocking transport ------------------------------------------------------------------


class _Connection:
    __slots__ = ("buffer", "origin", "sock", "timeout")

    def __init__(self, sock: socket.socket, origin: tuple[str, int]) -> None:
        self.sock = sock
        self.origin = origin
        self.buffer = b""  # bytes received past the previous response (none, normally)
        self.timeout: float | None = sock.gettimeout()

    def settimeout(self, timeout: float | None) -> None:
        # Each settimeout costs two fcntl calls; most calls keep the same value.
        if timeout != self.timeout:
            self.sock.settimeout(timeout)
            self.timeout = timeout

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _alive(sock: socket.socket) -> bool:
    """An idle keep-alive connection is usable when nothing is readable on it (no EOF)."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return not poller.poll(0)
        readable, _, _ = select.select([sock], [], [], 0)
        return not readable
    except (OSError, ValueError):
        return False


class _SyncBody(httpx.SyncByteStream):
    """The body of one response, read from the connection as it is iterated."""

    def __init__(
        self,
        transport: LeanTransport,
        connection: _Connection,
        head: _Head,
        extra: bytes,
        read_timeout: float | None,
    ) -> None:
        self._transport = transport
        self._connection: _Connection | None = connection
        self._head = head
        self._extra = extra
        self._timeout = read_timeout

    def __iter__(self) -> Iterator[bytes]:
        connection = self._connection
        if connection is None:
            return
        sock = connection.sock
        head = self._head
        try:
            if head.mode == "length":
                length = head.length or 0
                if length:
                    yield self._read_exactly(sock, length)  # type: ignore[misc]
                elif self._extra:
                    connection.buffer = self._extra
            elif head.mode == "chunked":
                decoder = _ChunkedDecoder()
                data: bytes = self._extra
                while True:
                    yield from decoder.feed(data)
                    if decoder.done:
                        connection.buffer = bytes(decoder.pending)
                        break
                    data = self._recv(sock)
                    if not data:
                        raise httpx.RemoteProtocolError("connection closed inside a chunked body")
            else:
                if self._extra:
                    yield self._extra
                while True:
                    data = self._recv(sock)
                    if not data:
                        break
                    yield data
        except BaseException:
            self._discard()
            raise
        self._finish()

    def _recv(self, sock: socket.socket) -> bytes:
        try:
            return sock.recv(_RECV)
        except TimeoutError:
            raise httpx.ReadTimeout("timed out reading the response body") from None
        except OSError as exc:
            raise httpx.ReadError(str(exc)) from None

    def _read_exactly(self, sock: socket.socket, length: int) -> bytearray:
        body = bytearray(length)
        view = memoryview(body)
        have = min(len(self._extra), length)
        view[:have] = self._extra[:have]
        assert self._connection is not None
        self._connection.buffer = self._extra[length:]
        while have < length:
            try:
                n = sock.recv_into(view[have:])
            except TimeoutError:
                raise httpx.ReadTimeout("timed out reading the response body") from None
            except OSError as exc:
                raise httpx.ReadError(str(exc)) from None
            if n == 0:
                raise httpx.RemoteProtocolError(
                    f"connection closed after {have} of {length} body bytes"
                )
            have += n
        return body

    def _finish(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            if self._head.keep_alive and not connection.buffer:
                self._transport._release(connection)
            else:
                connection.close()

    def _discard(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def close(self) -> None:
        self._discard()


class LeanTransport(httpx.BaseTransport):
    """A blocking keep-alive HTTP/1.1 transport for ``http://`` URLs (see the module's doc).

    >>> httpx.Client(transport=LeanTransport())  # doctest: +SKIP
    """

    def __init__(self, *, max_idle: int = 100, fallback: httpx.BaseTransport | None = None) -> None:
        self._max_idle = max_idle
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._lock = threading.Lock()
        self._fallback = fallback
        self._closed = False

    def _fallback_transport(self) -> httpx.BaseTransport:
        if self._fallback is None:
            self._fallback = httpx.HTTPTransport()
        return self._fallback

    def _acquire(self, origin: tuple[str, int], connect_timeout: float | None) -> _Connection:
        with self._lock:
            idle = self._idle.get(origin)
            while idle:
                connection = idle.pop()
                if _alive(connection.sock):
                    return connection
                connection.close()
        try:
            sock = socket.create_connection(origin, timeout=connect_timeout)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"timed out connecting to {origin[0]}:{origin[1]}") from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {origin[0]}:{origin[1]}: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(sock, origin)

    def _release(self, connection: _Connection) -> None:
        with self._lock:
            if not self._closed:
                idle = self._idle.setdefault(connection.origin, [])
                if len(idle) < self._max_idle:
                    idle.append(connection)
                    return
        connection.close()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            return self._fallback_transport().handle_request(request)
        if self._closed:
            raise RuntimeError("the transport is closed")
        timeouts = _timeouts(request)
        origin = (url.host, url.port or 80)
        head_bytes = _request_head(request)
        pieces = _frame(_body_chunks(request), _is_chunked(request))
        connection = self._acquire(origin, timeouts.get("connect"))
        sock = connection.sock
        write_error: OSError | None = None
        try:
            connection.settimeout(timeouts.get("write"))
            total = len(head_bytes) + sum(len(p) for p in pieces)
            try:
                if total <= _SMALL_BODY:
                    sock.sendall(b"".join([head_bytes, *pieces]))
                else:
                    sock.sendall(head_bytes)
                    for piece in pieces:
                        sock.sendall(piece)
            except TimeoutError:
                raise httpx.WriteTimeout("timed out sending the request") from None
            except OSError as exc:
                # A server may answer (413...) and close before reading the whole body: its
                # answer is still worth reading, as httpcore does.
                write_error = exc
            connection.settimeout(timeouts.get("read"))
            try:
                head, extra = self._read_head(connection, request.method)
            except httpx.TransportError:
                if write_error is not None:
                    raise httpx.WriteError(str(write_error)) from None
                raise
        except BaseException:
            connection.close()
            raise
        if write_error is not None:
            head.keep_alive = False
        body = _SyncBody(self, connection, head, extra, timeouts.get("read"))
        return _response(head, body)

    def _read_head(self, connection: _Connection, method: str) -> tuple[_Head, bytes]:
        data = connection.buffer
        connection.buffer = b""
        sock = connection.sock
        while True:
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                head = _Head(data[:end], method)
                rest = data[end + 4 :]
                if 100 <= head.status < 200 and head.status != 101:
                    data = rest  # an interim answer (100 Continue): the real one follows
                    continue
                return head, rest
            if len(data) > _MAX_HEAD:
                raise httpx.RemoteProtocolError("the response head exceeds 64 KiB")
            try:
                more = sock.recv(_RECV)
            except TimeoutError:
                raise httpx.ReadTimeout("timed out waiting for the response") from None
            except OSError as exc:
                raise httpx.ReadError(str(exc)) from None
            if not more:
                raise httpx.RemoteProtocolError("server disconnected without sending a response")
            data += more

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()
        if self._fallback is not None:
            self._fallback.close()


# --- the asyncio transport -------------------------------------------------------------------


class _AsyncConnection(asyncio.BufferedProtocol):
    """One keep-alive connection; reads land in the head buffer, then straight in the body."""

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: tuple[str, int]) -> None:
        self.loop = loop
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.error: BaseException | None = None
        self._method = "GET"
        self._head_buffer = bytearray(_RECV)
        self._head_used = 0
        self._head: _Head | None = None
        self._extra = b""
        self._body: bytearray | None = None
        self._body_used = 0
        self._chunks: deque[bytes] = deque()
        self._decoder: _ChunkedDecoder | None = None
        self._eof = False
        self._waiter: asyncio.Future[None] | None = None
        self._can_write: asyncio.Future[None] | None = None
        self._cut_short = False
        self._state = "idle"  # idle -> head -> body -> done

    # protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._state == "body" and self._body is not None:
            return memoryview(self._body)[self._body_used :]
        if self._head_used == len(self._head_buffer):
            self._head_buffer.extend(bytes(_RECV))
        return memoryview(self._head_buffer)[self._head_used :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._state == "body" and self._body is not None:
            self._body_used += nbytes
            if self._body_used == len(self._body):
                self._chunks.append(self._body)  # type: ignore[arg-type]
                self._body = None
                self._state = "done"
                self._wake()
            return
        self._head_used += nbytes
        if self._state == "head":
            self._parse_head()
        elif self._state == "chunked" or self._state == "close":
            data = bytes(self._head_buffer[: self._head_used])
            self._head_used = 0
            self._feed(data)
        elif self._state in ("idle", "done"):
            # Bytes nobody asked for: the connection cannot be trusted any more.
            self._fail(httpx.RemoteProtocolError("unexpected data on an idle connection"))

    def eof_received(self) -> bool | None:
        self._eof = True
        if self._state == "close":
            self._state = "done"
        elif self._state not in ("idle", "done"):
            self._fail(self._disconnected())
        self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._state not in ("idle", "done") and self.error is None:
            if self._state == "close":
                self._state = "done"
            else:
                self.error = httpx.ReadError(str(exc)) if exc else self._disconnected()
        if self._can_write is not None and not self._can_write.done():
            self._can_write.set_result(None)
        self._wake()

    def pause_writing(self) -> None:
        self._can_write = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._can_write is not None and not self._can_write.done():
            self._can_write.set_result(None)
        self._can_write = None

    # parsing

    def _disconnected(self) -> httpx.RemoteProtocolError:
        if self._state == "head":
            return httpx.RemoteProtocolError("server disconnected without sending a response")
        return httpx.RemoteProtocolError("server disconnected inside the response body")

    def _parse_head(self) -> None:
        data = self._head_buffer[: self._head_used]
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if self._head_used > _MAX_HEAD:
                self._fail(httpx.RemoteProtocolError("the response head exceeds 64 KiB"))
            return
        try:
            head = _Head(bytes(data[:end]), self._method)
        except httpx.RemoteProtocolError as exc:
            self._fail(exc)
            return
        rest = bytes(data[end + 4 :])
        self._head_used = 0
        if 100 <= head.status < 200 and head.status != 101:
            self._head_buffer[: len(rest)] = rest
            self._head_used = len(rest)
            self._parse_head()
            return
        self._head = head
        if head.mode == "length":
            length = head.length or 0
            if len(rest) > length:
                self._fail(httpx.RemoteProtocolError("more data than Content-Length"))
                return
            if length == 0:
                self._state = "done"
            elif len(rest) == length:
                self._chunks.append(rest)
                self._state = "done"
            else:
                self._body = bytearray(length)
                self._body[: len(rest)] = rest
                self._body_used = len(rest)
                self._state = "body"
        elif head.mode == "chunked":
            self._decoder = _ChunkedDecoder()
            self._state = "chunked"
            self._feed(rest)
        else:
            self._state = "close"
            self._feed(rest)
        self._wake()

    def _feed(self, data: bytes) -> None:
        if self._state == "chunked":
            assert self._decoder is not None
            try:
                self._chunks.extend(self._decoder.feed(data))
            except httpx.RemoteProtocolError as exc:
                self._fail(exc)
                return
            if self._decoder.done:
                if self._decoder.pending:
                    self._fail(httpx.RemoteProtocolError("unexpected data after the body"))
                    return
                self._state = "done"
        elif data:
            self._chunks.append(data)
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.abort()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, timeout: float | None, what: str) -> None:
        waiter = self._waiter = self.loop.create_future()
        handle = None
        if timeout is not None:

            def expire() -> None:
                if not waiter.done():
                    waiter.set_exception(httpx.ReadTimeout(f"timed out {what}"))

            handle = self.loop.call_later(timeout, expire)
        try:
            await waiter
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()

    # the request cycle

    def usable(self) -> bool:
        return (
            not self.closed
            and not self._eof
            and self.error is None
            and self._state == "idle"
            and self._head_used == 0
            and self.transport is not None
            and not self.transport.is_closing()
        )

    async def send(self, pieces: list[bytes], write_timeout: float | None) -> None:
        assert self.transport is not None
        self._state = "head"
        self._head = None
        self._chunks.clear()
        self._decoder = None
        self._cut_short = False
        total = sum(len(p) for p in pieces)
        if total <= _SMALL_BODY:
            self.transport.write(b"".join(pieces))
        else:
            for piece in pieces:
                if self.closed or self._head is not None:
                    # Answered (or gone) before the whole body was sent: read the answer, and
                    # never reuse a connection whose request was cut short.
                    self._cut_short = True
                    break
                self.transport.write(piece)
                if self._can_write is not None:
                    await self._drain(write_timeout)
        if self.error is not None and self._head is None:
            raise self.error

    async def _drain(self, timeout: float | None) -> None:
        future = self._can_write
        if future is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            raise httpx.WriteTimeout("timed out sending the request") from None
        if self.closed and self._head is None:
            raise httpx.WriteError("the connection closed while sending the request")

    async def receive_head(self, read_timeout: float | None) -> _Head:
        while self._head is None:
            if self.error is not None:
                raise self.error
            await self._wait(read_timeout, "waiting for the response")
        return self._head

    async def next_chunk(self, read_timeout: float | None) -> bytes | None:
        while True:
            if self._chunks:
                return self._chunks.popleft()
            if self._state == "done":
                return None
            if self.error is not None:
                raise self.error
            await self._wait(read_timeout, "reading the response body")

    def finished(self) -> bool:
        head = self._head
        return (
            self._state == "done"
            and head is not None
            and head.keep_alive
            and not self._cut_short
            and self.error is None
            and not self._eof
        )

    def reset(self) -> None:
        self._state = "idle"
        self._head = None
        self._body = None
        self._body_used = 0

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            # A connection left from an event loop that has since closed cannot be aborted
            # through that loop; its socket goes with the transport object.
            with contextlib.suppress(RuntimeError):
                self.transport.abort()


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(
        self,
        transport: AsyncLeanTransport,
        connection: _AsyncConnection,
        read_timeout: float | None,
    ) -> None:
        self._transport = transport
        self._connection: _AsyncConnection | None = connection
        self._timeout = read_timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None:
            return
        try:
            while True:
                chunk = await connection.next_chunk(self._timeout)
                if chunk is None:
                    break
                yield chunk
        except BaseException:
            self._discard()
            raise
        self._connection = None
        if connection.finished():
            connection.reset()
            self._transport._release(connection)
        else:
            connection.abort()

    def _discard(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abort()

    async def aclose(self) -> None:
        self._discard()


class AsyncLeanTransport(httpx.AsyncBaseTransport):
    """The asyncio twin of :class:`LeanTransport`."""

    def __init__(
        self, *, max_idle: int = 100, fallback: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._max_idle = max_idle
        self._idle: dict[tuple[str, int], list[_AsyncConnection]] = {}
        self._fallback = fallback
        self._closed = False

    def _fallback_transport(self) -> httpx.AsyncBaseTransport:
        if self._fallback is None:
            self._fallback = httpx.AsyncHTTPTransport()
        return self._fallback

    async def _acquire(
        self, loop: asyncio.AbstractEventLoop, origin: tuple[str, int], timeout: float | None
    ) -> _AsyncConnection:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if connection.usable() and connection.loop is loop:
                return connection
            connection.abort()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _AsyncConnection(loop, origin), *origin),
                timeout,
            )
        except asyncio.TimeoutError:
            raise httpx.ConnectTimeout(f"timed out connecting to {origin[0]}:{origin[1]}") from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {origin[0]}:{origin[1]}: {exc}") from None
        return protocol

    def _release(self, connection: _AsyncConnection) -> None:
        if not self._closed:
            idle = self._idle.setdefault(connection.origin, [])
            if len(idle) < self._max_idle:
                idle.append(connection)
                return
        connection.abort()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # another event loop (trio): httpx's transport handles it
            loop = None
        if url.scheme != "http" or loop is None:
            return await self._fallback_transport().handle_async_request(request)
        if self._closed:
            raise RuntimeError("the transport is closed")
        timeouts = _timeouts(request)
        origin = (url.host, url.port or 80)
        head_bytes = _request_head(request)
        pieces = [head_bytes, *_frame(await _abody_chunks(request), _is_chunked(request))]
        connection = await self._acquire(loop, origin, timeouts.get("connect"))
        connection._method = request.method
        try:
            await connection.send(pieces, timeouts.get("write"))
            head = await connection.receive_head(timeouts.get("read"))
        except BaseException:
            connection.abort()
            raise
        return _response(head, _AsyncBody(self, connection, timeouts.get("read")))

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.abort()
        if self._fallback is not None:
            await self._fallback.aclose()
