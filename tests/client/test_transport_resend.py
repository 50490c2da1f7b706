"""A request that fails on a reused keep-alive connection before any byte of its answer arrives
is resent once on a fresh connection, whatever the client's retry setting (issue 11).

KServe closes a keep-alive connection right after a 500; a client that sends its next request on
it before the close has reached it gets a reset or an end of stream instead of an answer. The
scripted server below does the same at the worst moment: it reads the request, then closes (or
resets) the connection without a word, so the client cannot have seen the close beforehand.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from maas_client import APIConnectionError, AsyncClient, Client, InternalServerError
from maas_client._transport import AsyncLeanTransport, LeanTransport
from tests.client.scripted_server import RESET, Answer, ScriptedServer, Seen, ok, scripted_server


@pytest.fixture(autouse=True)
def _lean_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the lean transport: they use it whatever MAAS_TRANSPORT says."""
    monkeypatch.setenv("MAAS_TRANSPORT", "lean")


LIVE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
ERROR_500 = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\n{}"


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    with scripted_server() as server:
        yield server


def _hang_up(seen: Seen) -> None:
    return None  # the request was read; the connection closes without an answer


@pytest.mark.parametrize("closing", [_hang_up, lambda seen: RESET], ids=["eof", "reset"])
def test_a_closed_keep_alive_connection_is_resent_on_a_fresh_one(
    scripted: ScriptedServer, closing: Answer
) -> None:
    scripted.answers = [lambda seen: LIVE, closing, lambda seen: LIVE]
    with Client(scripted.url, max_retries=0) as client:
        assert client.server.live()
        assert client.server.live()  # failed on connection 1, resent on connection 2
        assert client.server.live()  # and connection 2 is kept
    assert scripted.connections == 2
    assert [s.connection for s in scripted.seen] == [1, 1, 2, 2]


@pytest.mark.parametrize("closing", [_hang_up, lambda seen: RESET], ids=["eof", "reset"])
async def test_a_closed_keep_alive_connection_is_resent_on_a_fresh_one_async(
    scripted: ScriptedServer, closing: Answer
) -> None:
    scripted.answers = [lambda seen: LIVE, closing, lambda seen: LIVE]
    async with AsyncClient(scripted.url, max_retries=0) as client:
        assert await client.server.live()
        assert await client.server.live()
        assert await client.server.live()
    assert scripted.connections == 2
    assert [s.connection for s in scripted.seen] == [1, 1, 2, 2]


def test_kserve_closing_after_a_500(scripted: ScriptedServer) -> None:
    scripted.answers = [lambda seen: ERROR_500, lambda seen: LIVE]
    scripted.close_after = {0}
    with Client(scripted.url, max_retries=0) as client:
        with pytest.raises(InternalServerError):
            client.server.live()
        assert client.server.live()
    assert scripted.connections == 2


async def test_kserve_closing_after_a_500_async(scripted: ScriptedServer) -> None:
    scripted.answers = [lambda seen: ERROR_500, lambda seen: LIVE]
    scripted.close_after = {0}
    async with AsyncClient(scripted.url, max_retries=0) as client:
        with pytest.raises(InternalServerError):
            await client.server.live()
        assert await client.server.live()
    assert scripted.connections == 2


def test_a_post_body_in_memory_is_resent(scripted: ScriptedServer) -> None:
    scripted.answers = [ok(b"one"), _hang_up, lambda seen: ok(seen.body)(seen)]
    with httpx.Client(transport=LeanTransport()) as client:
        assert client.post(scripted.url, content=b"first").content == b"one"
        assert client.post(scripted.url, content=b"x" * 100_000).content == b"x" * 100_000
    assert [len(s.body) for s in scripted.seen] == [5, 100_000, 100_000]


def test_resent_once_only(scripted: ScriptedServer) -> None:
    scripted.answers = [ok(b"one"), _hang_up, _hang_up, ok(b"never")]
    with (
        Client(scripted.url, max_retries=0) as client,
        pytest.raises(APIConnectionError, match="without sending a response"),
    ):
        client.server.live()
        client.server.live()
    assert len(scripted.seen) == 3 and scripted.connections == 2


def test_a_fresh_connection_is_not_resent(scripted: ScriptedServer) -> None:
    scripted.answers = [_hang_up, ok(b"never")]
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        httpx.Client(transport=LeanTransport()).get(scripted.url)
    assert len(scripted.seen) == 1


def test_a_streamed_body_is_not_resent(scripted: ScriptedServer) -> None:
    scripted.answers = [ok(b"one"), _hang_up, ok(b"never")]
    with httpx.Client(transport=LeanTransport()) as client:
        assert client.get(scripted.url).content == b"one"
        with pytest.raises(httpx.TransportError):  # a reset or an end, not resent
            client.post(scripted.url, content=iter([b"not ", b"replayable"]))
        assert client.get(scripted.url).content == b"never"  # a good request still works
    assert len(scripted.seen) == 3


async def test_a_streamed_body_is_not_resent_async(scripted: ScriptedServer) -> None:
    async def body() -> object:
        yield b"not replayable"

    scripted.answers = [ok(b"one"), _hang_up, ok(b"never")]
    async with httpx.AsyncClient(transport=AsyncLeanTransport()) as client:
        assert (await client.get(scripted.url)).content == b"one"
        with pytest.raises(httpx.TransportError):  # a reset or an end, not resent
            await client.post(scripted.url, content=body())  # type: ignore[arg-type]
        assert (await client.get(scripted.url)).content == b"never"
    assert len(scripted.seen) == 3


def test_no_resend_once_part_of_the_answer_arrived(scripted: ScriptedServer) -> None:
    scripted.answers = [ok(b"one"), lambda seen: b"HTTP/1.1 200 OK\r\nContent-Le", ok(b"never")]
    scripted.close_after = {1}
    with httpx.Client(transport=LeanTransport()) as client:
        assert client.get(scripted.url).content == b"one"
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(scripted.url)
    assert len(scripted.seen) == 2


async def test_no_resend_once_part_of_the_answer_arrived_async(scripted: ScriptedServer) -> None:
    scripted.answers = [ok(b"one"), lambda seen: b"HTTP/1.1 200 OK\r\nContent-Le", ok(b"never")]
    scripted.close_after = {1}
    async with httpx.AsyncClient(transport=AsyncLeanTransport()) as client:
        assert (await client.get(scripted.url)).content == b"one"
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(scripted.url)
    assert len(scripted.seen) == 2
