"""The lean transports honour :class:`httpx.Limits` and the pool timeout, on a real socket server
that counts the connections it accepts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from maas_client import AsyncClient, Client
from maas_client._transport import DEFAULT_LIMITS, AsyncLeanTransport, LeanTransport
from tests.client.scripted_server import ScriptedServer, Seen, ok, scripted_server, wait_until


@pytest.fixture(autouse=True)
def _lean_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the lean transport: they use it whatever MAAS_TRANSPORT says."""
    monkeypatch.setenv("MAAS_TRANSPORT", "lean")


LIVE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    with scripted_server() as server:
        yield server


def test_default_limits_are_httpx_defaults() -> None:
    assert (
        httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)
        == DEFAULT_LIMITS
    )


async def test_a_gather_of_1000_calls_opens_at_most_max_connections(
    scripted: ScriptedServer,
) -> None:
    scripted.answers = [lambda seen: LIVE]
    async with AsyncClient(scripted.url, max_retries=0) as client:
        results = await asyncio.gather(*(client.server.live() for _ in range(1000)))
    assert all(results) and len(scripted.seen) == 1000
    assert scripted.connections <= 100  # DEFAULT_LIMITS.max_connections, not 1,000 sockets


async def test_a_gather_under_explicit_limits(scripted: ScriptedServer) -> None:
    scripted.answers = [lambda seen: ok(seen.line)(seen)]
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    async with httpx.AsyncClient(transport=AsyncLeanTransport(limits=limits)) as client:
        responses = await asyncio.gather(*(client.get(f"{scripted.url}/{i}") for i in range(1000)))
    assert [r.content for r in responses] == [b"GET /%d HTTP/1.1" % i for i in range(1000)]
    assert 1 <= scripted.connections <= 8


def test_threads_share_at_most_max_connections(scripted: ScriptedServer) -> None:
    scripted.answers = [lambda seen: ok(seen.line)(seen)]
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    with (
        httpx.Client(transport=LeanTransport(limits=limits)) as client,
        ThreadPoolExecutor(32) as threads,
    ):
        bodies = list(threads.map(lambda i: client.get(f"{scripted.url}/{i}").content, range(400)))
    assert bodies == [b"GET /%d HTTP/1.1" % i for i in range(400)]
    assert 1 <= scripted.connections <= 4


def test_sync_client_threads_under_default_limits(scripted: ScriptedServer) -> None:
    scripted.answers = [lambda seen: LIVE]
    with Client(scripted.url, max_retries=0) as client, ThreadPoolExecutor(16) as threads:
        assert all(threads.map(lambda _: client.server.live(), range(200)))
    assert scripted.connections <= 16


def _held(release: threading.Event) -> object:
    def answer(seen: Seen) -> bytes:
        release.wait(10)
        return ok(b"held")(seen)

    return answer


def test_pool_timeout(scripted: ScriptedServer) -> None:
    release = threading.Event()
    scripted.answers = [_held(release), ok(b"next")]  # type: ignore[list-item]
    limits = httpx.Limits(max_connections=1)
    with httpx.Client(transport=LeanTransport(limits=limits)) as client:
        with ThreadPoolExecutor(1) as thread:
            first = thread.submit(client.get, scripted.url)
            wait_until(lambda: len(scripted.seen) == 1, "the first request holds the connection")
            with pytest.raises(httpx.PoolTimeout):
                client.get(scripted.url, timeout=httpx.Timeout(5.0, pool=0.05))
            release.set()
            assert first.result().content == b"held"
        assert client.get(scripted.url).content == b"next"  # the connection came back
    assert scripted.connections == 1


async def await_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.002)


async def test_pool_timeout_async(scripted: ScriptedServer) -> None:
    release = threading.Event()
    scripted.answers = [_held(release), ok(b"next")]  # type: ignore[list-item]
    transport = AsyncLeanTransport(limits=httpx.Limits(max_connections=1))
    async with httpx.AsyncClient(transport=transport) as client:
        first = asyncio.ensure_future(client.get(scripted.url))
        await await_until(lambda: len(scripted.seen) == 1, "the first request holds it")
        with pytest.raises(httpx.PoolTimeout):
            await client.get(scripted.url, timeout=httpx.Timeout(5.0, pool=0.05))
        # A request cancelled while waiting for the pool takes nothing away from it.
        waiting = asyncio.ensure_future(client.get(scripted.url))
        await await_until(lambda: len(transport._pool._waiters) == 1, "the request waits")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        release.set()
        assert (await first).content == b"held"
        assert (await client.get(scripted.url)).content == b"next"
    assert scripted.connections == 1


def test_keepalive_limits(scripted: ScriptedServer) -> None:
    scripted.answers = [ok(b"x")]
    for limits, expected in [
        (httpx.Limits(max_keepalive_connections=0), 3),  # none kept: one connection per call
        (httpx.Limits(keepalive_expiry=0), 3),  # kept, but expired when next wanted
        (httpx.Limits(keepalive_expiry=60), 1),
    ]:
        before = scripted.connections
        with httpx.Client(transport=LeanTransport(limits=limits)) as client:
            for _ in range(3):
                assert client.get(scripted.url).content == b"x"
        assert scripted.connections - before == expected, limits


async def test_keepalive_limits_async(scripted: ScriptedServer) -> None:
    scripted.answers = [ok(b"x")]
    for limits, expected in [
        (httpx.Limits(max_keepalive_connections=0), 3),
        (httpx.Limits(keepalive_expiry=0), 3),
        (httpx.Limits(keepalive_expiry=60), 1),
    ]:
        before = scripted.connections
        async with httpx.AsyncClient(transport=AsyncLeanTransport(limits=limits)) as client:
            for _ in range(3):
                assert (await client.get(scripted.url)).content == b"x"
        assert scripted.connections - before == expected, limits


def test_a_full_pool_closes_an_idle_connection_to_another_origin(
    scripted: ScriptedServer,
) -> None:
    scripted.answers = [ok(b"a")]
    with scripted_server() as other:
        other.answers = [ok(b"b")]
        limits = httpx.Limits(max_connections=1)
        timeout = httpx.Timeout(5.0, pool=0.5)
        with httpx.Client(transport=LeanTransport(limits=limits), timeout=timeout) as client:
            assert client.get(scripted.url).content == b"a"
            assert client.get(other.url).content == b"b"  # no PoolTimeout: a's idle one closed
            wait_until(lambda: scripted.closed == 1, "the first server saw its connection close")
            assert client.get(scripted.url).content == b"a"
        assert (scripted.connections, other.connections) == (2, 1)


def test_a_closed_transport_refuses_requests(scripted: ScriptedServer) -> None:
    scripted.answers = [ok(b"x")]
    transport = LeanTransport()
    with httpx.Client(transport=transport) as client:
        assert client.get(scripted.url).content == b"x"
    wait_until(lambda: scripted.closed == 1, "the idle connection is closed with the transport")
    with pytest.raises(RuntimeError, match="closed"):
        transport.handle_request(httpx.Request("GET", scripted.url))
