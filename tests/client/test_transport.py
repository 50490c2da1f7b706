"""The lean HTTP/1.1 transport against a scripted socket server: framing, keep-alive, failures.

The scripted server reads each request (head and ``Content-Length`` body) and answers with the
bytes a test gives it, so every framing case (chunked, close-delimited, interim 100, split
writes) and every failure (disconnects, silence, garbage) is exercised on a real socket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from maas_client import APIConnectionError, APITimeoutError, AsyncClient, Client, RetryPolicy
from maas_client._transport import AsyncLeanTransport, LeanTransport
from tests.client.scripted_server import ScriptedServer, Seen, ok, scripted_server, wait_until


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    with scripted_server() as server:
        yield server


def get(transport: LeanTransport, url: str, **kwargs: object) -> httpx.Response:
    with httpx.Client(transport=transport) as client:
        return client.get(url, **kwargs)  # type: ignore[arg-type]


# --- framing -----------------------------------------------------------------------------------


def test_keep_alive_reuses_one_connection(scripted: ScriptedServer) -> None:
    scripted.answers = [ok(b"one"), ok(b"two"), ok(b"three")]
    with httpx.Client(transport=LeanTransport()) as client:
        bodies = [client.get(scripted.url + f"/{i}").content for i in range(3)]
    assert bodies == [b"one", b"two", b"three"]
    assert scripted.connections == 1
    assert [s.line for s in scripted.seen] == [
        b"GET /0 HTTP/1.1",
        b"GET /1 HTTP/1.1",
        b"GET /2 HTTP/1.1",
    ]
    assert scripted.seen[0].headers[b"host"] == f"127.0.0.1:{scripted.port}".encode()


def test_chunked_body_with_extensions_and_trailers(scripted: ScriptedServer) -> None:
    chunked = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n",
        b"1\r\n \r\n6\r\nworld!\r\n0\r\nX-Trailer: yes\r\n\r\n",
    ]
    scripted.answers = [lambda seen: chunked, ok(b"after")]
    with httpx.Client(transport=LeanTransport()) as client:
        assert client.get(scripted.url).content == b"hello world!"
        assert client.get(scripted.url).content == b"after"
    assert scripted.connections == 1  # a chunked body ends cleanly: the connection is reused


def test_close_delimited_body_and_connection_close(scripted: ScriptedServer) -> None:
    scripted.answers = [
        lambda seen: [b"HTTP/1.0 200 OK\r\n\r\npart one, ", b"part two"],
        ok(b"x", b"Connection: close"),
        ok(b"y"),
    ]
    scripted.close_after = {0, 1}
    with httpx.Client(transport=LeanTransport()) as client:
        assert client.get(scripted.url).content == b"part one, part two"
        assert client.get(scripted.url).content == b"x"
        assert client.get(scripted.url).content == b"y"
    assert scripted.connections == 3


def test_interim_100_and_bodiless_answers(scripted: ScriptedServer) -> None:
    scripted.answers = [
        lambda seen: b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"real")(seen),
        lambda seen: b"HTTP/1.1 204 No Content\r\n\r\n",
        lambda seen: b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n",  # HEAD: no body follows
        ok(b"last"),
    ]
    with httpx.Client(transport=LeanTransport()) as client:
        assert client.get(scripted.url).content == b"real"
        assert client.get(scripted.url).status_code == 204
        assert client.head(scripted.url).headers["content-length"] == "4"
        assert client.get(scripted.url).content == b"last"
    assert scripted.connections == 1


def test_large_bodies_both_ways(scripted: ScriptedServer) -> None:
    payload = np.random.default_rng(1).integers(0, 255, 3 << 20, dtype=np.uint8).tobytes()

    def echo(seen: Seen) -> list[bytes]:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(seen.body)
        return [head + seen.body[:1000], seen.body[1000:2_000_000], seen.body[2_000_000:]]

    scripted.answers = [echo]
    with httpx.Client(transport=LeanTransport()) as client:
        response = client.post(scripted.url, content=payload)
    assert response.content == payload
    assert scripted.seen[0].headers[b"content-length"] == str(len(payload)).encode()


def test_chunked_request_body(scripted: ScriptedServer) -> None:
    def raw_echo(seen: Seen) -> bytes:
        return ok(seen.headers.get(b"transfer-encoding", b"none"))(seen)

    scripted.answers = [raw_echo]
    with httpx.Client(transport=LeanTransport()) as client:
        response = client.post(scripted.url, content=iter([b"ab", b"cd"]))
    assert response.content == b"chunked"


# --- failures ----------------------------------------------------------------------------------


def test_server_closing_an_idle_connection(scripted: ScriptedServer) -> None:
    scripted.answers = [ok(b"first"), ok(b"second")]
    scripted.close_after = {0}
    transport = LeanTransport()
    with httpx.Client(transport=transport) as client:
        assert client.get(scripted.url).content == b"first"
        wait_until(lambda: scripted.closed == 1, "the server has closed the connection")
        assert client.get(scripted.url).content == b"second"
    assert scripted.connections == 2


def test_disconnect_without_answer(scripted: ScriptedServer) -> None:
    scripted.answers = [lambda seen: None]
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        get(LeanTransport(), scripted.url)


def test_truncated_and_malformed_answers(scripted: ScriptedServer) -> None:
    scripted.answers = [lambda seen: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"]
    scripted.close_after = {0}
    with pytest.raises(httpx.RemoteProtocolError, match="after 5 of 10 body bytes"):
        get(LeanTransport(), scripted.url)
    scripted.answers = [lambda seen: b"SPDY/9 nonsense\r\n\r\n"]
    with pytest.raises(httpx.RemoteProtocolError, match="malformed response: Expected HTTP/"):
        get(LeanTransport(), scripted.url)
    scripted.answers = [lambda seen: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"]
    with pytest.raises(httpx.RemoteProtocolError, match="chunk size"):
        get(LeanTransport(), scripted.url)


def test_read_timeout(scripted: ScriptedServer) -> None:
    scripted.answers = [lambda seen: [b"", b"", b""]]  # silence: three 10 ms pauses, nothing sent
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        get(LeanTransport(), scripted.url, timeout=0.05)
    assert time.monotonic() - started < 1


def test_header_injection_is_refused(scripted: ScriptedServer) -> None:
    scripted.answers = [ok()]
    with pytest.raises(httpx.LocalProtocolError, match="invalid character"):
        get(LeanTransport(), scripted.url, headers={"X-Evil": "a\r\nInjected: yes"})
    assert scripted.seen == []


def test_connect_errors() -> None:
    with pytest.raises(httpx.ConnectError):
        get(LeanTransport(), "http://127.0.0.1:9/")


def test_https_goes_to_the_fallback() -> None:
    answered: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        answered.append(str(request.url))
        return httpx.Response(200, text="tls")

    transport = LeanTransport(fallback=httpx.MockTransport(handler))
    assert get(transport, "https://example.invalid/x").text == "tls"
    assert answered == ["https://example.invalid/x"]


def test_client_errors_from_the_transport(scripted: ScriptedServer) -> None:
    scripted.answers = [lambda seen: None]
    with (
        Client(scripted.url, max_retries=1, retry_policy=_no_wait()) as client,
        pytest.raises(APIConnectionError, match="without sending a response") as info,
    ):
        client.server.live()
    assert info.value.attempts == 2 and scripted.connections == 2
    scripted.answers = [lambda seen: [b"", b""]]
    with (
        Client(scripted.url, max_retries=0, timeout=0.05) as client,
        pytest.raises(APITimeoutError),
    ):
        client.server.live()


def _no_wait() -> RetryPolicy:
    return RetryPolicy(initial_delay=0.0, jitter=0.0)


# --- the asyncio transport ---------------------------------------------------------------------


async def aget(transport: AsyncLeanTransport, url: str, **kwargs: object) -> httpx.Response:
    async with httpx.AsyncClient(transport=transport) as client:
        return await client.get(url, **kwargs)  # type: ignore[arg-type]


async def test_async_framing_and_reuse(scripted: ScriptedServer) -> None:
    chunked = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", b"0\r\n\r\n"]
    scripted.answers = [
        ok(b"one"),
        lambda seen: chunked,
        lambda seen: b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"two")(seen),
        lambda seen: [b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsp", b"lit", b"!"],
    ]
    async with httpx.AsyncClient(transport=AsyncLeanTransport()) as client:
        bodies = [(await client.get(scripted.url)).content for _ in range(4)]
    assert bodies == [b"one", b"abc", b"two", b"split!"]
    assert scripted.connections == 1


async def test_async_close_delimited_and_idle_close(scripted: ScriptedServer) -> None:
    scripted.answers = [lambda seen: [b"HTTP/1.0 200 OK\r\n\r\nuntil ", b"eof"], ok(b"again")]
    scripted.close_after = {0}
    async with httpx.AsyncClient(transport=AsyncLeanTransport()) as client:
        assert (await client.get(scripted.url)).content == b"until eof"
        assert (await client.get(scripted.url)).content == b"again"
    assert scripted.connections == 2


async def test_async_large_echo(scripted: ScriptedServer) -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB

    def echo(seen: Seen) -> list[bytes]:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(seen.body)
        return [head, seen.body[:100_000], seen.body[100_000:]]

    scripted.answers = [echo]
    async with httpx.AsyncClient(transport=AsyncLeanTransport()) as client:
        response = await client.post(scripted.url, content=payload)
    assert response.content == payload


async def test_async_failures(scripted: ScriptedServer) -> None:
    scripted.answers = [lambda seen: None]
    with pytest.raises(httpx.RemoteProtocolError):
        await aget(AsyncLeanTransport(), scripted.url)
    scripted.answers = [lambda seen: [b"", b"", b""]]
    with pytest.raises(httpx.ReadTimeout):
        await aget(AsyncLeanTransport(), scripted.url, timeout=0.05)
    with pytest.raises(httpx.ConnectError):
        await aget(AsyncLeanTransport(), "http://127.0.0.1:9/")
    scripted.answers = [lambda seen: b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc"]
    scripted.close_after = {len(scripted.seen)}  # the next request's index
    with pytest.raises(httpx.RemoteProtocolError, match="inside the response body"):
        await aget(AsyncLeanTransport(), scripted.url)


async def test_async_client_over_the_scripted_server(scripted: ScriptedServer) -> None:
    scripted.answers = [lambda seen: [b""] * 3]
    async with AsyncClient(scripted.url, max_retries=0, timeout=0.05) as client:
        with pytest.raises(APITimeoutError):
            await client.server.live()


async def test_async_concurrent_requests_use_several_connections(
    scripted: ScriptedServer,
) -> None:
    scripted.answers = [lambda seen: [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"ok"]]
    async with httpx.AsyncClient(transport=AsyncLeanTransport()) as client:
        responses = await asyncio.gather(*(client.get(scripted.url) for _ in range(8)))
    assert {r.content for r in responses} == {b"ok"}
    assert 1 < scripted.connections <= 8


def _too_large(seen: Seen) -> bytes:
    body = b'{"error": "request body exceeds the server\'s limit"}'
    return b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def test_an_answer_sent_before_the_body_is_read(scripted: ScriptedServer) -> None:
    scripted.read_bodies = False
    scripted.answers = [_too_large]
    payload = b"\0" * (8 << 20)
    with httpx.Client(transport=LeanTransport()) as client:
        response = client.post(scripted.url, content=payload)
    assert response.status_code == 413 and b"limit" in response.content


async def test_an_answer_sent_before_the_body_is_read_async(scripted: ScriptedServer) -> None:
    scripted.read_bodies = False
    scripted.answers = [_too_large]
    payload = b"\0" * (8 << 20)
    async with httpx.AsyncClient(transport=AsyncLeanTransport()) as client:
        response = await client.post(scripted.url, content=payload)
        assert response.status_code == 413
        scripted.read_bodies = True
        scripted.answers = [_too_large, ok(b"fresh")]
        assert (await client.get(scripted.url)).content == b"fresh"  # a new connection
    assert scripted.connections == 2


async def test_async_connection_close_after_a_complete_answer(scripted: ScriptedServer) -> None:
    scripted.answers = [ok(b"bye", b"Connection: close"), ok(b"hello again")]
    scripted.close_after = {0}
    async with httpx.AsyncClient(transport=AsyncLeanTransport()) as client:
        first = await client.get(scripted.url)
        second = await client.get(scripted.url)
    assert (first.content, second.content) == (b"bye", b"hello again")
    assert scripted.connections == 2
