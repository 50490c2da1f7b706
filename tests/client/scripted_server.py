"""A scripted HTTP/1.1 socket server for the transport tests: it reads each request (head and
``Content-Length`` body) and answers with the bytes a test gives it, on a real socket."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

Answer = Callable[["Seen"], "bytes | list[bytes] | None"]
RESET = b"<reset the connection>"  # an answer: close the connection with an RST


@dataclass
class Seen:
    """One request as the scripted server received it."""

    line: bytes
    headers: dict[bytes, bytes]
    body: bytes
    connection: int


@dataclass
class ScriptedServer:
    """Answers request n with ``answers[n]`` (the last one for the requests after): bytes (or
    pieces sent with a pause between), ``None`` to close the connection without answering, or
    :data:`RESET` to reset it; ``close_after`` closes after answering the requests it names.
    ``connections`` counts the connections accepted, ``closed`` those the server has closed."""

    answers: list[Answer] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    close_after: set[int] = field(default_factory=set)
    read_bodies: bool = True
    closed: int = 0

    def start(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(1024)
        self.port = self._sock.getsockname()[1]
        self._stop = False
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        try:
            self._converse(conn, number)
        except OSError:
            pass  # the client reset the connection: as good as closing it
        finally:
            with self._lock:
                self.closed += 1

    def _converse(self, conn: socket.socket, number: int) -> None:
        buffer = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                line, *lines = head.split(b"\r\n")
                headers = {}
                for item in lines:
                    name, _, value = item.partition(b":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get(b"content-length", b"0")) if self.read_bodies else 0
                while len(buffer) < length:
                    data = conn.recv(1 << 20)
                    if not data:
                        return
                    buffer += data
                body, buffer = buffer[:length], buffer[length:]
                seen = Seen(line, headers, body, number)
                with self._lock:
                    self.seen.append(seen)
                    index = len(self.seen) - 1
                answer = self.answers[min(index, len(self.answers) - 1)](seen)
                if answer is None:
                    return
                if answer is RESET:  # an RST instead of a FIN
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                pieces = [answer] if isinstance(answer, bytes) else answer
                for n, piece in enumerate(pieces):
                    if n:
                        time.sleep(0.01)  # the client sees the pieces in separate reads
                    conn.sendall(piece)
                if index in self.close_after or not self.read_bodies:
                    if not self.read_bodies:  # close with the body unread: the client's
                        conn.shutdown(socket.SHUT_RDWR)  # next writes fail
                    return

    def stop(self) -> None:
        self._stop = True
        self._sock.close()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.002)


def ok(body: bytes = b"hello", *extra: bytes) -> Callable[[Seen], bytes]:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (
        len(body),
        b"".join(e + b"\r\n" for e in extra),
    )
    return lambda seen: head + body


@contextmanager
def scripted_server() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
