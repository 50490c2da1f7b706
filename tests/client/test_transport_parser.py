"""The lean transports' response parser (llhttp through httptools) under fuzzing, and bounded
reads: whatever a server sends, the parser gives the right answer or an httpx exception (never
another one), and no buffer grows from what a server announces instead of what it sends."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maas_client._http11 import MAX_HEAD, PREALLOCATE, ResponseParser
from maas_client._transport import AsyncLeanTransport, LeanTransport
from tests.client.scripted_server import ScriptedServer, Seen, ok, scripted_server

TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1)
VALUE = st.binary(max_size=40).map(
    lambda b: bytes(c for c in b if 0x21 <= c <= 0x7E or c == 0x20).strip()
)
FRAMINGS = ("length", "chunked", "close")


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    with scripted_server() as server:
        yield server


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, dict[str, object]]:
    """A well-formed response and what it means."""
    status = draw(st.sampled_from([200, 201, 204, 304, 400, 404, 413, 429, 500, 503, 599]))
    reason = draw(st.sampled_from([b"OK", b"", b"Some Reason", b"x"]))
    names = draw(st.lists(TOKEN, max_size=6, unique_by=str.lower))
    headers = [
        (name.encode(), draw(VALUE))
        for name in names
        if name.lower() not in ("content-length", "transfer-encoding", "connection")
    ]
    framing = draw(st.sampled_from(FRAMINGS))
    body = draw(st.binary(max_size=3000))
    if status in (204, 304):
        framing, body = "none", b""
    interim = draw(st.booleans())
    lines = [b"HTTP/1.1 %d %s" % (status, reason), *[b"%s: %s" % h for h in headers]]
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
        payload = body
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        sizes = draw(st.lists(st.integers(1, 700), max_size=8))
        chunks, rest = [], body
        for size in sizes:
            if rest:
                chunks.append(rest[:size])
                rest = rest[size:]
        if rest:
            chunks.append(rest)
        ext = draw(st.sampled_from([b"", b";name=value"]))
        payload = b"".join(b"%x%s\r\n%s\r\n" % (len(c), ext, c) for c in chunks)
        payload += b"0\r\n" + draw(st.sampled_from([b"", b"Trailer: yes\r\n"])) + b"\r\n"
    else:
        payload = body if framing == "close" else b""
    raw = b"\r\n".join(lines) + b"\r\n\r\n" + payload
    if interim:
        raw = b"HTTP/1.1 100 Continue\r\n\r\n" + raw
    meaning = {"status": status, "headers": headers, "framing": framing, "body": body}
    return raw, meaning


def split(data: bytes, points: list[int]) -> list[bytes]:
    cuts = sorted({p % (len(data) + 1) for p in points})
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def feed_all(parser: ResponseParser, pieces: list[bytes]) -> bytes:
    body = b""
    for piece in pieces:
        parser.feed(piece)
        body += b"".join(parser.take())
    return body


@settings(max_examples=400, deadline=None)
@given(responses(), st.lists(st.integers(0, 10_000), max_size=6))
def test_well_formed_responses_parse_at_any_split(
    response: tuple[bytes, dict[str, object]], points: list[int]
) -> None:
    raw, meaning = response
    parser = ResponseParser()
    body = feed_all(parser, split(raw, points))
    head = parser.head
    assert head is not None
    assert head.status == meaning["status"]
    assert head.framing == meaning["framing"]
    framing_headers = {b"content-length", b"transfer-encoding"}
    assert [h for h in head.headers if h[0].lower() not in framing_headers] == meaning["headers"]
    assert body == meaning["body"]
    assert parser.complete == (meaning["framing"] != "close")  # close: ends with the connection
    assert head.keep_alive == (meaning["framing"] != "close")
    assert not parser.trailing


def mutate(raw: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    data = bytearray(raw)
    for position, kind, value in edits:
        at = position % (len(data) + 1)
        if kind == 0:
            data[at : at + 1] = value  # replace one byte
        elif kind == 1:
            data[at:at] = value  # insert
        else:
            del data[at : at + len(value)]  # delete
    return bytes(data)


HOSTILE = st.sampled_from(
    [
        b"Content-Length: 18446744073709551615",
        b"Content-Length: 99999999999999999999999999",
        b"Content-Length: -1",
        b"Content-Length: 0x10",
        b"Content-Length: \xb2",
        b"Content-Length: 5, 5",
        b"Content-Length: 1\r\nContent-Length: 2",
        b"Transfer-Encoding: chunked\r\nContent-Length: 3",
        b"Transfer-Encoding: gzip, chunked",
        b"Transfer-Encoding: chunked, gzip",
        b"X: a\r\n folded",
        b"X: \x00",
        b"Connection: upgrade\r\nUpgrade: h2c",
        b"ffffffffffffffffffff",
    ]
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    responses(),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 2), st.binary(max_size=4))),
    st.one_of(st.none(), HOSTILE),
    st.lists(st.integers(0, 10_000), max_size=5),
    st.sampled_from([b"200", b"101", b"100", b"999", b"20", b"2000"]),
)
def test_malformed_responses_raise_httpx_errors_only(
    response: tuple[bytes, dict[str, object]],
    edits: list[tuple[int, int, bytes]],
    hostile: bytes | None,
    points: list[int],
    status: bytes,
) -> None:
    raw, _ = response
    if hostile is not None:
        line_end = raw.index(b"\r\n", raw.index(b"HTTP/1.1 ", 0 if raw[9:12] != b"100" else 20))
        raw = raw[:line_end] + b"\r\n" + hostile + raw[line_end:]
    if status != b"200":
        raw = raw.replace(b"HTTP/1.1 %s" % raw[9:12], b"HTTP/1.1 " + status, 1)
    raw = mutate(raw, edits)
    parser = ResponseParser()
    fed = 0
    try:
        for piece in split(raw, points):
            fed += len(piece)
            parser.feed(piece)
            assert parser.body_bytes <= fed  # never more body than bytes received
    except httpx.RemoteProtocolError:
        return
    if parser.head is not None and parser.head.framing == "length":
        assert parser.head.length >= parser.body_bytes


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(0, 10_000), max_size=5))
def test_random_bytes_raise_httpx_errors_only(data: bytes, points: list[int]) -> None:
    parser = ResponseParser()
    try:
        for piece in split(data, points):
            parser.feed(piece)
    except httpx.RemoteProtocolError:
        pass


def test_the_head_is_bounded() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(httpx.RemoteProtocolError, match="head exceeds 64 KiB"):
        for _ in range(MAX_HEAD // 1000 + 2):
            parser.feed(b"X-Filler: " + b"a" * 988 + b"\r\n")
    endless_interim = ResponseParser()
    with pytest.raises(httpx.RemoteProtocolError, match="head exceeds"):
        for _ in range(MAX_HEAD // 25 + 2):
            endless_interim.feed(b"HTTP/1.1 100 Continue\r\n\r\n")


def test_data_after_the_answer_marks_the_connection() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 200 OK\r\n")
    assert parser.complete and parser.trailing and parser.take() == [b"hi"]
    head_only = ResponseParser(head_request=True)
    head_only.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
    assert head_only.complete and not head_only.trailing
    head_only.feed(b"hi")
    assert head_only.trailing


# --- bounded reads on a real socket ------------------------------------------------------------


def _peak_during(call: object) -> int:
    tracemalloc.start()
    try:
        call()  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


HUGE = [2**63 - 1, 10**15, 1 << 40]


@pytest.mark.parametrize("announced", HUGE)
def test_an_announced_length_allocates_nothing_ahead(
    scripted: ScriptedServer, announced: int
) -> None:
    scripted.answers = [
        lambda seen: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nabc" % announced
    ]
    scripted.close_after = {0}

    def call() -> None:
        with (
            httpx.Client(transport=LeanTransport()) as client,
            pytest.raises(httpx.RemoteProtocolError, match=f"after 3 of {announced} body bytes"),
        ):
            client.get(scripted.url)

    assert _peak_during(call) < PREALLOCATE + (2 << 20)


@pytest.mark.parametrize("announced", HUGE)
def test_an_announced_length_allocates_nothing_ahead_async(
    scripted: ScriptedServer, announced: int
) -> None:
    scripted.answers = [
        lambda seen: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nabc" % announced
    ]
    scripted.close_after = {0}

    async def call() -> None:
        async with httpx.AsyncClient(transport=AsyncLeanTransport()) as client:
            with pytest.raises(httpx.RemoteProtocolError, match="inside the response body"):
                await client.get(scripted.url)

    assert _peak_during(lambda: asyncio.run(call())) < PREALLOCATE + (2 << 20)
    scripted.answers = [ok(b"fine")]
    with httpx.Client(transport=LeanTransport()) as client:
        assert client.get(scripted.url).content == b"fine"  # a good request still works


LARGE = bytes(range(256)) * (9 * 4096) + b"end"  # 9 MiB + 3: the buffer grows past 4 MiB


def _large(seen: Seen) -> list[bytes]:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(LARGE)
    return [head + LARGE[:100], LARGE[100:5_000_000], LARGE[5_000_000:]]


def test_a_body_beyond_the_preallocation_grows_into_one_buffer(scripted: ScriptedServer) -> None:
    scripted.answers = [_large, ok(b"next")]
    with httpx.Client(transport=LeanTransport()) as client:
        with client.stream("GET", scripted.url) as response:
            chunks = list(response.iter_raw())
        assert len(chunks) == 1 and isinstance(chunks[0], bytearray) and chunks[0] == LARGE
        assert client.get(scripted.url).content == b"next"
    assert scripted.connections == 1


async def test_a_body_beyond_the_preallocation_grows_into_one_buffer_async(
    scripted: ScriptedServer,
) -> None:
    scripted.answers = [_large, ok(b"next")]
    async with httpx.AsyncClient(transport=AsyncLeanTransport()) as client:
        async with client.stream("GET", scripted.url) as response:
            chunks = [chunk async for chunk in response.aiter_raw()]
        assert len(chunks) == 1 and isinstance(chunks[0], bytearray) and chunks[0] == LARGE
        assert (await client.get(scripted.url)).content == b"next"
    assert scripted.connections == 1


def test_an_endless_head_is_refused(scripted: ScriptedServer) -> None:
    filler = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    scripted.answers = [lambda seen: [b"HTTP/1.1 200 OK\r\n" + filler * 100]]
    with (
        httpx.Client(transport=LeanTransport()) as client,
        pytest.raises(httpx.RemoteProtocolError, match="head exceeds"),
    ):
        client.get(scripted.url)


async def test_an_endless_head_is_refused_async(scripted: ScriptedServer) -> None:
    filler = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    scripted.answers = [lambda seen: [b"HTTP/1.1 200 OK\r\n" + filler * 100]]
    async with httpx.AsyncClient(transport=AsyncLeanTransport()) as client:
        with pytest.raises(httpx.RemoteProtocolError, match="head exceeds"):
            await client.get(scripted.url)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(response=responses(), points=st.lists(st.integers(0, 10_000), max_size=2))
def test_the_transports_frame_well_formed_responses(
    scripted: ScriptedServer, response: tuple[bytes, dict[str, object]], points: list[int]
) -> None:
    raw, meaning = response
    scripted.answers = [lambda seen: split(raw, points)]
    scripted.close_after = {len(scripted.seen), len(scripted.seen) + 1}

    with httpx.Client(transport=LeanTransport()) as client:
        answer = client.get(scripted.url)
    assert (answer.status_code, answer.content) == (meaning["status"], meaning["body"])

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=AsyncLeanTransport()) as aclient:
            return await aclient.get(scripted.url)

    answer = asyncio.run(call())
    assert (answer.status_code, answer.content) == (meaning["status"], meaning["body"])
