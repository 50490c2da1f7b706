"""A lean HTTP/1.1 transport for plain ``http://`` servers, behind httpx's transport interface.

Per call, httpx's own transport (httpcore and h11) costs about twice the client CPU of
``tritonclient.http`` on small requests, most of it in per-event bookkeeping, and writes the
request head and body in separate system calls. :class:`LeanTransport` (blocking) and
:class:`AsyncLeanTransport` (asyncio) speak the subset of HTTP/1.1 an inference client needs:

- responses are parsed by llhttp (``httptools``, :mod:`maas_client._http11`), with a bound on
  the head; a ``Content-Length`` body is received straight into one buffer (``recv_into``, or
  ``asyncio.BufferedProtocol``) that never runs more than 4 MiB ahead of the bytes received,
  and handed over without another copy; chunked and close-delimited bodies are read as they
  come;
- one ``send`` for the head and a small body; large bodies go out chunk by chunk from the
  tensors' memory, never joined; a body of unknown length (chunked) is streamed as it is made;
- connections are pooled under :class:`httpx.Limits` (:mod:`maas_client._transport_pool`):
  ``max_connections``, ``max_keepalive_connections``, ``keepalive_expiry``, and the pool
  timeout of the request;
- a request that fails on a reused keep-alive connection before any byte of its answer arrives
  (the server closed it: a reset, or an end of stream) is resent once on a fresh connection
  when its body is in memory, as urllib3 and browsers do; a body streamed from an iterator is
  never resent;
- errors and timeouts are httpx's exceptions, through one table
  (:mod:`maas_client._transport_errors`), so the client's retry decisions do not depend on the
  transport.

``https://`` URLs go to httpx's own transport (``fallback``, created on first use with the same
limits). The asynchronous transport runs on asyncio; under another event loop it hands requests
to :class:`httpx.AsyncHTTPTransport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
import urllib.request
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import cast

import httpx

from ._http11 import ResponseHead, ResponseParser, body_buffer, grow, request_head
from ._transport_errors import CLOSED_UNDER_US, disconnected, transport_error
from ._transport_pool import DEFAULT_LIMITS, Origin, Pool, Waiter

__all__ = ["DEFAULT_LIMITS", "AsyncLeanTransport", "LeanTransport", "proxies_configured"]

_RECV = 64 * 1024
# Reads while waiting for a head stay small: what comes after the head is body, and the bytes of
# a Content-Length body are better received straight into its buffer than copied there.
_HEAD_RECV = 8 * 1024
_SMALL_BODY = 64 * 1024
_LAST_CHUNK = b"0\r\n\r\n"


def proxies_configured() -> bool:
    """Whether the environment names an HTTP proxy (``HTTP_PROXY``, ``ALL_PROXY``...)."""
    return bool(urllib.request.getproxies())


# --- request bodies --------------------------------------------------------------------------


class _Body:
    """What a request sends after its head: ``pieces`` in memory (which can be sent again), or
    a ``stream`` of unknown length sent once, in chunked coding."""

    __slots__ = ("chunked", "pieces", "stream")

    def __init__(
        self,
        pieces: list[bytes] | None,
        stream: Iterable[bytes] | AsyncIterable[bytes] | None = None,
        chunked: bool = True,
    ) -> None:
        self.pieces = pieces
        self.stream = stream
        self.chunked = chunked
        """A stream without ``Content-Length`` goes out in chunked encoding; one with it (a
        file uploaded from disk) as it is read."""

    @property
    def replayable(self) -> bool:
        return self.pieces is not None


def _streamed(request: httpx.Request) -> bool:
    return "content-length" not in request.headers and (
        request.headers.get("transfer-encoding", "").lower() == "chunked"
    )


def _from_source(stream: object) -> bool:
    """A body read from its source as it is sent (``stream_from_source``: an upload from disk),
    rather than held in memory first; it has a ``Content-Length`` and is not resent."""
    return bool(getattr(stream, "stream_from_source", False))


def _body(request: httpx.Request) -> _Body:
    stream = request.stream
    assert isinstance(stream, Iterable)
    if _streamed(request):
        return _Body(None, stream)
    if _from_source(stream):
        return _Body(None, stream, chunked=False)
    return _Body([chunk for chunk in stream if len(chunk)])


async def _abody(request: httpx.Request) -> _Body:
    stream = request.stream
    if _streamed(request):
        return _Body(None, stream)
    if _from_source(stream):
        return _Body(None, stream, chunked=False)
    if isinstance(stream, httpx.SyncByteStream):  # in memory already (bytes, BodyStream)
        return _Body([chunk for chunk in stream if len(chunk)])
    assert isinstance(stream, httpx.AsyncByteStream)
    return _Body([chunk async for chunk in stream if len(chunk)])


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _where(origin: Origin) -> str:
    return f"cannot connect to {origin[0]}:{origin[1]}"


class _Stale(Exception):
    """A reused connection the server had closed: nothing of the answer arrived."""

    def __init__(self, error: httpx.TransportError) -> None:
        super().__init__(str(error))
        self.error = error


# --- the blocking transport ------------------------------------------------------------------


class _Connection:
    __slots__ = ("origin", "parser", "sock", "timeout", "used")

    def __init__(self, sock: socket.socket, origin: Origin) -> None:
        self.sock = sock
        self.origin = origin
        self.timeout: float | None = sock.gettimeout()
        self.used = 0  # answers received on it
        self.parser = ResponseParser()

    def settimeout(self, timeout: float | None) -> None:
        # Each settimeout costs two fcntl calls; most calls keep the same value.
        if timeout != self.timeout:
            self.sock.settimeout(timeout)
            self.timeout = timeout

    def close(self) -> None:
        self.parser.detach()
        with contextlib.suppress(OSError):
            self.sock.close()


def _alive(connection: _Connection) -> bool:
    """An idle keep-alive connection is usable when nothing is readable on it (no EOF)."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(connection.sock, select.POLLIN)
            return not poller.poll(0)
        readable, _, _ = select.select([connection.sock], [], [], 0)
        return not readable
    except (OSError, ValueError):
        return False


class _SyncBody(httpx.SyncByteStream):
    """The body of one response, read from the connection as it is iterated."""

    def __init__(
        self, transport: LeanTransport, connection: _Connection, parser: ResponseParser
    ) -> None:
        self._transport = transport
        self._connection: _Connection | None = connection
        self._parser = parser

    def __iter__(self) -> Iterator[bytes]:
        connection = self._connection
        if connection is None:
            return
        parser = self._parser
        head = parser.head
        assert head is not None
        try:
            if head.framing == "length" and not parser.complete:
                yield self._read_rest(connection.sock, head.length)  # type: ignore[misc]
            else:
                while True:
                    yield from parser.take()
                    if parser.complete:
                        break
                    data = self._recv(connection.sock)
                    if not data:
                        if head.framing == "close":
                            break
                        raise disconnected(inside_body=True)
                    parser.feed(data)
        except BaseException:
            self._finish(reusable=False)
            raise
        reusable = head.keep_alive and head.framing != "close" and not parser.trailing
        self._finish(reusable)

    @staticmethod
    def _recv(sock: socket.socket) -> bytes:
        try:
            return sock.recv(_RECV)
        except OSError as exc:
            raise transport_error(exc, "read", "reading the response body") from None

    def _read_rest(self, sock: socket.socket, length: int) -> bytearray:
        parser = self._parser
        body, have = body_buffer(length, parser.take())
        parser.detach()
        view = memoryview(body)
        try:
            while have < length:
                if have == len(body):
                    view.release()
                    body = grow(body, length)
                    view = memoryview(body)
                try:
                    n = sock.recv_into(view[have:])
                except OSError as exc:
                    raise transport_error(exc, "read", "reading the response body") from None
                if n == 0:
                    raise httpx.RemoteProtocolError(
                        f"connection closed after {have} of {length} body bytes"
                    )
                have += n
        finally:
            view.release()
        return body

    def _finish(self, reusable: bool) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._transport._pool.release(connection, reusable)

    def close(self) -> None:
        self._finish(reusable=False)


class LeanTransport(httpx.BaseTransport):
    """A blocking keep-alive HTTP/1.1 transport for ``http://`` URLs (see the module's doc).

    >>> limits = httpx.Limits(max_connections=8)
    >>> httpx.Client(transport=LeanTransport(limits=limits))  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        limits: httpx.Limits = DEFAULT_LIMITS,
        fallback: httpx.BaseTransport | None = None,
    ) -> None:
        self._limits = limits
        self._pool: Pool[_Connection] = Pool(limits)
        self._fallback = fallback

    @property
    def _closed(self) -> bool:
        return self._pool.closed

    def _fallback_transport(self) -> httpx.BaseTransport:
        if self._fallback is None:
            self._fallback = httpx.HTTPTransport(limits=self._limits)
        return self._fallback

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            return self._fallback_transport().handle_request(request)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        origin = (url.host, url.port or 80)
        head = request_head(request)
        body = _body(request)
        connection = self._acquire(origin, timeouts, fresh=False)
        try:
            return self._exchange(connection, request, head, body, timeouts)
        except _Stale as stale:
            if not body.replayable:
                raise stale.error from None
        connection = self._acquire(origin, timeouts, fresh=True)  # resent once
        try:
            return self._exchange(connection, request, head, body, timeouts)
        except _Stale as stale:
            raise stale.error from None

    def _acquire(
        self, origin: Origin, timeouts: dict[str, float | None], fresh: bool
    ) -> _Connection:
        pool = self._pool
        got = pool.checkout(origin, _alive, fresh)
        if isinstance(got, Waiter):
            granted = threading.Event()
            got.wake = granted.set
            if not got.granted:
                granted.wait(timeouts.get("pool"))
            got = pool.settle(got)
        if got is not None:
            return got
        try:
            sock = socket.create_connection(origin, timeout=timeouts.get("connect"))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException as exc:
            pool.discard()
            if isinstance(exc, Exception):
                raise transport_error(exc, "connect", _where(origin)) from None
            raise
        return _Connection(sock, origin)

    def _exchange(
        self,
        connection: _Connection,
        request: httpx.Request,
        head: bytes,
        body: _Body,
        timeouts: dict[str, float | None],
    ) -> httpx.Response:
        parser = connection.parser
        parser.begin(request.method == "HEAD")
        try:
            write_error = self._send(connection, head, body, timeouts.get("write"))
            connection.settimeout(timeouts.get("read"))
            try:
                self._receive_head(connection, parser)
            except (OSError, EOFError) as exc:
                stale = connection.used > 0 and parser.fed == 0
                if write_error is not None:
                    error: httpx.TransportError = transport_error(write_error, "write")
                    stale = stale and isinstance(write_error, CLOSED_UNDER_US)
                elif isinstance(exc, EOFError):
                    error = disconnected(inside_body=False)
                else:
                    error = transport_error(exc, "read", "waiting for the response")
                stale = stale and isinstance(exc, CLOSED_UNDER_US)
                if stale:
                    raise _Stale(error) from None
                raise error from None
        except BaseException:
            connection.close()
            self._pool.discard()
            raise
        connection.used += 1
        response_head = parser.head
        assert response_head is not None
        if write_error is not None:
            response_head.keep_alive = False
        return response_head.response(_SyncBody(self, connection, parser))

    @staticmethod
    def _send(
        connection: _Connection, head: bytes, body: _Body, timeout: float | None
    ) -> OSError | None:
        """Send the request; a failed write is returned: a server may answer (413...) and
        close before reading the whole body, and its answer is still worth reading."""
        sock = connection.sock
        connection.settimeout(timeout)
        try:
            if body.pieces is not None:
                pieces = body.pieces
                if len(head) + sum(len(p) for p in pieces) <= _SMALL_BODY:
                    sock.sendall(b"".join([head, *pieces]))
                else:
                    sock.sendall(head)
                    for piece in pieces:
                        sock.sendall(piece)
            else:
                assert isinstance(body.stream, Iterable)
                sock.sendall(head)
                for data in body.stream:
                    if len(data):
                        sock.sendall(_chunk(data) if body.chunked else data)
                if body.chunked:
                    sock.sendall(_LAST_CHUNK)
        except TimeoutError:
            raise httpx.WriteTimeout("timed out sending the request") from None
        except OSError as exc:
            return exc
        return None

    @staticmethod
    def _receive_head(connection: _Connection, parser: ResponseParser) -> None:
        sock = connection.sock
        while parser.head is None:
            data = sock.recv(_HEAD_RECV)
            if not data:
                raise EOFError
            parser.feed(data)

    def close(self) -> None:
        for connection in self._pool.close():
            connection.close()
        if self._fallback is not None:
            self._fallback.close()


# --- the asyncio transport -------------------------------------------------------------------


class _AsyncConnection(asyncio.BufferedProtocol):
    """One keep-alive connection; reads land in a receive buffer fed to the parser, then, for a
    ``Content-Length`` body, straight in the body's buffer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: Origin) -> None:
        self.loop = loop
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.error: httpx.TransportError | None = None
        self.stale = False  # closed under us before any byte of the answer
        self.used = 0  # answers received on it
        self._receive = bytearray(_RECV)
        self._receive_view = memoryview(self._receive)
        self._head_view = self._receive_view[:_HEAD_RECV]
        self._parser = ResponseParser()
        self._body: bytearray | None = None
        self._body_used = 0
        self._length = 0
        self._chunks: deque[bytes] = deque()
        self._eof = False
        self._trailing = False
        self._waiter: asyncio.Future[None] | None = None
        self._can_write: asyncio.Future[None] | None = None
        self._cut_short = False
        self._state = "idle"  # idle -> head -> body (Content-Length, in place) | parsed -> done

    # protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get_buffer(self, sizehint: int) -> memoryview:
        body = self._body
        if self._state == "body" and body is not None:
            if self._body_used == len(body):
                body = self._body = grow(body, self._length)
            return memoryview(body)[self._body_used :]
        return self._head_view if self._state == "head" else self._receive_view

    def buffer_updated(self, nbytes: int) -> None:
        state = self._state
        if state == "body":
            self._body_used += nbytes
            if self._body_used == self._length:
                assert self._body is not None
                self._chunks.append(self._body)  # type: ignore[arg-type]
                self._body = None
                self._state = "done"
                self._wake()
            return
        parser = self._parser
        if state not in ("head", "parsed"):
            if state == "done":
                self._trailing = True  # bytes after the answer: not reused
            else:  # bytes nobody asked for: the connection cannot be trusted any more
                self._fail(httpx.RemoteProtocolError("unexpected data on an idle connection"))
            return
        try:
            parser.feed(self._receive_view[:nbytes])
        except httpx.TransportError as exc:
            self._fail(exc)
            return
        if state == "head":
            head = parser.head
            if head is None:
                return
            if head.framing == "length" and not parser.complete:
                self._body, self._body_used = body_buffer(head.length, parser.take())
                self._length = head.length
                parser.detach()
                self._state = "body"
                self._wake()
                return
            self._state = "parsed"
        self._chunks.extend(parser.take())
        if parser.complete:
            self._state = "done"
            self._trailing = parser.trailing
        self._wake()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._ended(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._ended(exc)
        if self._can_write is not None and not self._can_write.done():
            self._can_write.set_result(None)

    def _ended(self, exc: Exception | None) -> None:
        state = self._state
        parser = self._parser
        head = parser.head
        if state == "parsed" and head is not None and head.framing == "close" and exc is None:
            self._state = "done"
            self._wake()
            return
        if state in ("idle", "done") or self.error is not None:
            self._wake()
            return
        nothing = state == "head" and parser.fed == 0
        if exc is None:
            self.error = disconnected(inside_body=state != "head")
        else:
            self.error = transport_error(exc, "read", "reading the response")
        self.stale = nothing and (exc is None or isinstance(exc, CLOSED_UNDER_US))
        self._wake()

    def pause_writing(self) -> None:
        self._can_write = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._can_write is not None and not self._can_write.done():
            self._can_write.set_result(None)
        self._can_write = None

    def _fail(self, exc: httpx.TransportError) -> None:
        if self.error is None:
            self.error = exc
        self.close()
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
            and self.transport is not None
            and not self.transport.is_closing()
        )

    async def send(
        self, head: bytes, body: _Body, head_request: bool, write_timeout: float | None
    ) -> None:
        transport = self.transport
        assert transport is not None
        parser = self._parser
        parser.begin(head_request)
        self._state = "head"
        self._chunks.clear()
        self._cut_short = False
        self._trailing = False
        if body.pieces is not None:
            pieces = body.pieces
            if len(head) + sum(len(p) for p in pieces) <= _SMALL_BODY:
                transport.write(b"".join([head, *pieces]))
            else:
                transport.write(head)
                for piece in pieces:
                    if not await self._write(piece, write_timeout):
                        break
        else:
            transport.write(head)
            stream = body.stream
            assert isinstance(stream, AsyncIterable)
            async for data in stream:
                framed = _chunk(data) if body.chunked else data
                if len(data) and not await self._write(framed, write_timeout):
                    break
            else:
                if body.chunked:
                    await self._write(_LAST_CHUNK, write_timeout)
        if self.error is not None and parser.head is None:
            raise self.error

    async def _write(self, data: bytes, timeout: float | None) -> bool:
        if self.closed or self._state != "head":
            # Answered (or gone) before the whole body was sent: read the answer, and never
            # reuse a connection whose request was cut short.
            self._cut_short = True
            return False
        assert self.transport is not None
        self.transport.write(data)
        future = self._can_write
        if future is not None:
            try:
                await asyncio.wait_for(asyncio.shield(future), timeout)
            except asyncio.TimeoutError:
                raise httpx.WriteTimeout("timed out sending the request") from None
        return True

    async def receive_head(self, read_timeout: float | None) -> ResponseHead:
        parser = self._parser
        while parser.head is None:
            if self.error is not None:
                raise self.error
            await self._wait(read_timeout, "waiting for the response")
        if self.error is not None and self._state == "head":
            raise self.error
        return parser.head

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
        """Whether the answer is over and the connection may carry another request."""
        head = self._parser.head
        reusable = (
            self._state == "done"
            and head is not None
            and head.keep_alive
            and not self._cut_short
            and not self._trailing
            and self.error is None
            and not self._eof
        )
        self._body = None
        self._state = "idle" if reusable else "done"
        return reusable

    def close(self) -> None:
        self.closed = True
        self._parser.detach()
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
        self._transport._pool.release(connection, connection.finished())

    def _discard(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.finished()
            self._transport._pool.release(connection, reusable=False)

    async def aclose(self) -> None:
        self._discard()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class AsyncLeanTransport(httpx.AsyncBaseTransport):
    """The asyncio counterpart of :class:`LeanTransport` (same limits, same errors)."""

    def __init__(
        self,
        *,
        limits: httpx.Limits = DEFAULT_LIMITS,
        fallback: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._limits = limits
        self._pool: Pool[_AsyncConnection] = Pool(limits)
        self._fallback = fallback

    @property
    def _closed(self) -> bool:
        return self._pool.closed

    def _fallback_transport(self) -> httpx.AsyncBaseTransport:
        if self._fallback is None:
            self._fallback = httpx.AsyncHTTPTransport(limits=self._limits)
        return self._fallback

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # another event loop (trio): httpx's transport handles it
            loop = None
        if url.scheme != "http" or loop is None:
            return await self._fallback_transport().handle_async_request(request)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        origin = (url.host, url.port or 80)
        head = request_head(request)
        body = await _abody(request)
        connection = await self._acquire(loop, origin, timeouts, fresh=False)
        try:
            return await self._exchange(connection, request, head, body, timeouts)
        except _Stale as stale:
            if not body.replayable:
                raise stale.error from None
        connection = await self._acquire(loop, origin, timeouts, fresh=True)  # resent once
        try:
            return await self._exchange(connection, request, head, body, timeouts)
        except _Stale as stale:
            raise stale.error from None

    async def _acquire(
        self,
        loop: asyncio.AbstractEventLoop,
        origin: Origin,
        timeouts: dict[str, float | None],
        fresh: bool,
    ) -> _AsyncConnection:
        pool = self._pool
        got = pool.checkout(origin, lambda c: c.loop is loop and c.usable(), fresh)
        if isinstance(got, Waiter):
            granted: asyncio.Future[None] = loop.create_future()

            def wake() -> None:
                try:
                    here = asyncio.get_running_loop() is loop
                except RuntimeError:
                    here = False
                if here:
                    _resolve(granted)
                else:
                    loop.call_soon_threadsafe(_resolve, granted)

            got.wake = wake
            try:
                if not got.granted:
                    await asyncio.wait_for(granted, timeouts.get("pool"))
            except asyncio.TimeoutError:
                pass  # settled below: a grant that raced the timeout is still taken
            except BaseException:
                pool.abandon(got)
                raise
            got = pool.settle(got)
        if got is not None:
            return got
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: _AsyncConnection(loop, origin), *origin),
                timeouts.get("connect"),
            )
        except BaseException as exc:
            pool.discard()
            if isinstance(exc, Exception):
                raise transport_error(exc, "connect", _where(origin)) from None
            raise
        return connection

    async def _exchange(
        self,
        connection: _AsyncConnection,
        request: httpx.Request,
        head: bytes,
        body: _Body,
        timeouts: dict[str, float | None],
    ) -> httpx.Response:
        try:
            await connection.send(head, body, request.method == "HEAD", timeouts.get("write"))
            response_head = await connection.receive_head(timeouts.get("read"))
        except BaseException as exc:
            connection.close()
            self._pool.discard()
            if isinstance(exc, httpx.TransportError) and connection.stale and connection.used:
                raise _Stale(exc) from None
            raise
        connection.used += 1
        return response_head.response(_AsyncBody(self, connection, timeouts.get("read")))

    async def aclose(self) -> None:
        for connection in self._pool.close():
            connection.close()
        if self._fallback is not None:
            await self._fallback.aclose()
