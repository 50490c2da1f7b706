"""Event streams: closing (the server stops generating), errors sent inside a stream, and what
is retried (everything before the first event, nothing after).

Real servers where they can show it: a ``tiny_gpt`` engine paused after a few steps shows that a
stream left early stops its sequence at once; an engine made to fail mid-generation sends a real
``event: error``; a server started on a port only after the first attempt was refused shows a
retried connection. Scripted answers (respx) cover what maas does not send: statuses to retry,
a connection lost before or after the first event, OpenAI-shaped errors, malformed streams.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import respx

from maas_client import (
    APIConnectionError,
    APIResponseValidationError,
    APIStreamError,
    AsyncClient,
    Client,
    InternalServerError,
    RetryPolicy,
)
from maas_server import Settings, default_repository
from maas_server.generation import GenerationEngine, GenerationService
from tests.client.conftest import AsyncClientFactory, ClientFactory, Delays
from tests.conftest import RunningServer, free_port, start_server, wait_for
from tests.server.conftest import engine_of
from tests.waiting import StepGate, until

LONG = {"max_tokens": 200, "parameters": {"ignore_eos": True}}
STREAM_PATH = "/v2/models/tiny_gpt/generate_stream"
PAUSE_AFTER = 8
"""Steps a generation of ``LONG`` gets before the engine pauses: it lasts until the test lets go."""


# --- closing the stream stops the generation ---------------------------------------------------


def stopped_early(gate: StepGate, cancels: int, before: int) -> None:
    """Wait until the server has cancelled the sequence because its client closed the stream
    (the engine paused, nothing more to send), then let the engine go: the sequence ends after
    the step in progress, and the engine is ready for the next one."""
    wait_for(lambda: gate.cancels == cancels)
    gate.open()
    wait_for(lambda: gate.engine.active_sequences == 0)
    assert gate.engine.tokens - before <= PAUSE_AFTER + 1
    gate.pause_after(PAUSE_AFTER)


async def stopped_early_async(gate: StepGate, cancels: int, before: int) -> None:
    """:func:`stopped_early` for a test on the event loop (which must go on running)."""
    await until(lambda: gate.cancels == cancels)
    gate.open()
    await until(lambda: gate.engine.active_sequences == 0)
    assert gate.engine.tokens - before <= PAUSE_AFTER + 1
    gate.pause_after(PAUSE_AFTER)


def test_breaking_out_of_the_loop_closes_the_connection(
    engine_gate: StepGate, make_generation_client: ClientFactory
) -> None:
    engine = engine_gate.engine
    engine_gate.pause_after(PAUSE_AFTER)
    before = engine.tokens
    with make_generation_client() as client:
        stream = client.generate_stream("tiny_gpt", "Copyright", **LONG)  # type: ignore[arg-type]
        for chunk in stream:
            if chunk.index == 2:
                assert engine.active_sequences == 1
                break
        # no with block and no close(): leaving the loop is enough
        stopped_early(engine_gate, 1, before)
        engine_gate.open()
        assert stream.text  # what arrived stays readable
        assert list(stream) == []
        with pytest.raises(RuntimeError, match="closed before its last event"):
            stream.get_final()
        # the client goes on working
        assert client.generate("tiny_gpt", "a", max_tokens=2).completion_tokens == 2


def test_close_and_the_with_block_close_the_connection(
    engine_gate: StepGate, make_generation_client: ClientFactory
) -> None:
    engine = engine_gate.engine
    engine_gate.pause_after(PAUSE_AFTER)
    with make_generation_client() as client:
        before = engine.tokens
        stream = client.generate_stream("tiny_gpt", "Copyright", **LONG)  # type: ignore[arg-type]
        first, second = next(stream), next(stream)
        assert (first.index, second.index) == (0, 1)
        assert engine.active_sequences == 1
        stream.close()
        stopped_early(engine_gate, 1, before)
        stream.close()  # again: nothing happens
        with pytest.raises(StopIteration):
            next(stream)

        before = engine.tokens
        with client.generate_stream("tiny_gpt", "Copyright", **LONG) as stream:  # type: ignore[arg-type]
            next(stream)
            assert engine.active_sequences == 1
        stopped_early(engine_gate, 2, before)

        # an exception inside the loop leaves it, which closes the stream too
        before = engine.tokens
        with pytest.raises(KeyError):
            for _ in client.generate_stream("tiny_gpt", "Copyright", **LONG):  # type: ignore[arg-type]
                raise KeyError("the caller's own failure")
        stopped_early(engine_gate, 3, before)
    engine_gate.open()


@pytest.mark.parametrize("kind", ["lean", "httpx"])
async def test_async_streams_close_the_connection(
    engine_gate: StepGate, generation_url: str, kind: str
) -> None:
    engine = engine_gate.engine
    engine_gate.pause_after(PAUSE_AFTER)
    http = httpx.AsyncClient(timeout=30.0) if kind == "httpx" else None
    async with AsyncClient(generation_url, http_client=http) as aclient:
        before = engine.tokens
        async with aclient.generate_stream("tiny_gpt", "Copyright", **LONG) as stream:  # type: ignore[arg-type]
            async for chunk in stream:
                if chunk.index == 2:
                    assert engine.active_sequences == 1
                    break
        await stopped_early_async(engine_gate, 1, before)
        assert stream.text

        # leaving the loop alone closes it too (once the event loop finalizes the iterator)
        before = engine.tokens
        stream = aclient.generate_stream("tiny_gpt", "Copyright", **LONG)  # type: ignore[arg-type]
        async for chunk in stream:
            if chunk.index == 2:
                break
        await stopped_early_async(engine_gate, 2, before)

        before = engine.tokens
        stream = await aclient.generate_stream("tiny_gpt", "Copyright", **LONG)  # type: ignore[arg-type]
        await stream.__anext__()
        await stream.close()
        await stopped_early_async(engine_gate, 3, before)
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()
        with pytest.raises(RuntimeError, match="closed before its last event"):
            await stream.get_final()

        # a stream closed before it was used never sends anything
        never = aclient.generate_stream("tiny_gpt", "Copyright")
        await never.close()
        assert [chunk async for chunk in never] == []
        assert engine_gate.cancels == 3
    engine_gate.open()
    if http is not None:
        await http.aclose()


# --- errors sent inside the stream --------------------------------------------------------------


@pytest.fixture
def failing_engine(
    generation_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> GenerationEngine:
    """The tiny_gpt engine, failing from its 5th decode step on."""
    service: GenerationService = generation_server.server.config.app.state.generation
    engine = engine_of(service, generation_server.url, "tiny_gpt")
    original = engine._execute
    calls = 0

    def failing(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 4:
            raise RuntimeError("the accelerator caught fire")
        return original(*args)

    monkeypatch.setattr(engine, "_execute", failing)
    return engine


def test_an_error_event_raises_a_typed_error(
    failing_engine: GenerationEngine, generation_url: str, fast_retries: RetryPolicy
) -> None:
    received: list[str] = []
    with Client(generation_url, retry_policy=fast_retries) as client:
        stream = client.generate_stream("tiny_gpt", "Copyright", max_tokens=30, request_id="r-9")
        with pytest.raises(APIStreamError) as caught:
            for chunk in stream:
                received.append(chunk.text)
    error = caught.value
    assert received and "".join(received) == stream.text
    assert "the accelerator caught fire" in error.error
    assert "the accelerator caught fire" in str(error)
    assert error.event == "error" and error.body == {"error": error.error}
    assert (error.request_id, error.attempts) == ("r-9", 1)
    assert error.response.status_code == 200
    assert list(stream) == []  # the stream is closed
    wait_for(lambda: failing_engine.active_sequences == 0)


async def test_an_error_event_raises_a_typed_error_async(
    failing_engine: GenerationEngine, generation_url: str
) -> None:
    async with AsyncClient(generation_url) as aclient:
        async with aclient.generate_stream("tiny_gpt", "Copyright", max_tokens=30) as stream:
            with pytest.raises(APIStreamError, match="the accelerator caught fire"):
                async for _ in stream:
                    pass
        assert stream.text


def test_a_failure_before_the_first_event_is_retried_as_a_500(
    generation_server: RunningServer,
    monkeypatch: pytest.MonkeyPatch,
    fast_retries: RetryPolicy,
    delays: Delays,
) -> None:
    service: GenerationService = generation_server.server.config.app.state.generation
    engine = engine_of(service, generation_server.url, "tiny_gpt")

    def failing(*args: Any) -> Any:
        raise RuntimeError("no memory left")

    monkeypatch.setattr(engine, "_execute", failing)
    with (
        Client(generation_server.url, retry_policy=fast_retries) as client,
        pytest.raises(InternalServerError, match="no memory left") as caught,
    ):
        client.generate_stream("tiny_gpt", "Copyright")
    assert caught.value.attempts == 3 and delays == [0.5, 1.0]


# --- retries before the first event, with a server that starts late ---------------------------


def _late_server(port: int, started: list[RunningServer]) -> None:
    if not started:
        started.append(start_server(Settings(repository=default_repository()), port=port))


def test_a_refused_connection_is_retried_until_the_server_listens() -> None:
    port = free_port()
    started: list[RunningServer] = []
    waits: list[float] = []

    def start_then_wait(seconds: float) -> None:
        waits.append(seconds)
        _late_server(port, started)

    policy = RetryPolicy(jitter=0.0, sleep=start_then_wait)
    try:
        with Client(f"http://127.0.0.1:{port}", retry_policy=policy) as client:
            stream = client.generate_stream("tiny_gpt", "Copyright", max_tokens=8)
            with stream:
                final = stream.get_final()
        assert final.completion_tokens == 8 and final.timing.attempts == 2
        assert stream.attempts == 2 and waits == [0.5]
    finally:
        for server in started:
            server.stop()


async def test_a_refused_connection_is_retried_until_the_server_listens_async() -> None:
    port = free_port()
    started: list[RunningServer] = []

    async def start_then_wait(seconds: float) -> None:
        _late_server(port, started)

    policy = RetryPolicy(jitter=0.0, async_sleep=start_then_wait)
    try:
        async with (
            AsyncClient(f"http://127.0.0.1:{port}", retry_policy=policy) as aclient,
            aclient.generate_stream("tiny_gpt", "Copyright", max_tokens=8) as stream,
        ):
            final = await stream.get_final()
        assert final.completion_tokens == 8 and final.timing.attempts == 2
    finally:
        for server in started:
            server.stop()


# --- several servers ---------------------------------------------------------------------------


def test_streams_fail_over_and_count_as_outstanding_until_closed(
    generation_url: str, fast_retries: RetryPolicy, delays: Delays
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with Client([dead, generation_url], retry_policy=fast_retries) as client:
        assert client._pool is not None
        down, live = client._pool.endpoints
        for _ in range(3):
            with client.generate_stream("tiny_gpt", "Copyright", max_tokens=8) as stream:
                next(stream)
                assert (live.outstanding, down.outstanding) == (1, 0)
                assert stream.get_final().completion_tokens == 8
            assert live.outstanding == 0
        assert down.failures >= 1 and live.sent == 3
        assert set(delays) <= {0.0}  # another server at once, no back-off


async def test_streams_fail_over_async(
    generation_url: str, fast_retries: RetryPolicy, delays: Delays
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with AsyncClient([dead, generation_url], retry_policy=fast_retries) as aclient:
        assert aclient._pool is not None
        down, live = aclient._pool.endpoints
        async with aclient.generate_stream("tiny_gpt", "Copyright", max_tokens=8) as stream:
            await stream.__anext__()
            assert live.outstanding == 1
        assert live.outstanding == 0 and down.failures == 1
        assert set(delays) <= {0.0}


# --- scripted answers -----------------------------------------------------------------------------


class ScriptedBody(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body given piece by piece; an exception in the script is raised there."""

    def __init__(self, *pieces: bytes | Exception) -> None:
        self.pieces = pieces
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        for piece in self.pieces:
            if isinstance(piece, Exception):
                raise piece
            yield piece

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            if isinstance(piece, Exception):
                raise piece
            yield piece

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


def event(text: str, **extra: Any) -> bytes:
    data = {"model_name": "tiny_gpt", "model_version": "1", "text_output": text, **extra}
    return b"data: " + orjson.dumps(data) + b"\n\n"


FINAL = event("", finish_reason="length", prompt_tokens=2, completion_tokens=2)
SSE = {"content-type": "text/event-stream"}


def scripted(
    router: respx.Router, *answers: httpx.Response | Exception | ScriptedBody
) -> respx.Route:
    """The stream route answering each attempt with the next answer (a body: a 200 SSE answer)."""
    queue = list(answers)

    def answer(request: httpx.Request) -> httpx.Response:
        item = queue.pop(0)
        if isinstance(item, Exception):
            raise item
        if isinstance(item, ScriptedBody):
            return httpx.Response(200, headers=SSE, stream=item)
        return item

    return router.post(STREAM_PATH).mock(side_effect=answer)


def test_retryable_failures_before_the_first_event_are_retried(
    router: respx.Router, routed_client: ClientFactory, delays: Delays
) -> None:
    body = ScriptedBody(event("Hel"), event("lo"), FINAL)
    route = scripted(
        router,
        httpx.ConnectError("refused"),
        httpx.Response(503, json={"error": "busy"}, headers={"retry-after": "2"}),
        ScriptedBody(b": ping\n\n", httpx.ReadError("reset before any event")),
        httpx.Response(429, json={"error": "slow down"}, headers={"retry-after-ms": "250"}),
        body,
    )
    client = routed_client(max_retries=4)
    with client.generate_stream("tiny_gpt", "x", request_id="same") as stream:
        assert stream.get_final().text == "Hello"
    assert route.call_count == 5 and stream.attempts == 5
    assert delays == [0.5, 2.0, 2.0, 0.25]
    assert {call.request.headers["x-request-id"] for call in route.calls} == {"same"}
    assert body.closed


def test_nothing_is_retried_after_the_first_event(
    router: respx.Router, routed_client: ClientFactory, delays: Delays
) -> None:
    body = ScriptedBody(event("Hel"), httpx.ReadError("connection reset"))
    route = scripted(router, body)
    stream = routed_client(max_retries=4).generate_stream("tiny_gpt", "x")
    assert next(stream).text == "Hel"
    with pytest.raises(APIConnectionError, match="connection reset") as caught:
        next(stream)
    assert caught.value.attempts == 1
    assert route.call_count == 1 and delays == []
    assert body.closed


def test_statuses_not_retried_and_retries_switched_off(
    router: respx.Router, routed_client: ClientFactory
) -> None:
    route = scripted(
        router,
        httpx.Response(503, json={"error": "busy"}),
        httpx.Response(200, json={"text_output": "not a stream"}),
    )
    client = routed_client()
    with pytest.raises(InternalServerError, match="busy"):
        client.generate_stream("tiny_gpt", "x", max_retries=0)
    with pytest.raises(APIResponseValidationError, match="not an event stream"):
        client.generate_stream("tiny_gpt", "x")
    assert route.call_count == 2


def test_error_events_in_either_shape(router: respx.Router, routed_client: ClientFactory) -> None:
    scripted(
        router,
        ScriptedBody(event("a"), b'event: error\ndata: {"error": "boom"}\n\n'),
        # OpenAI's shape: an "error" object in an unnamed event
        ScriptedBody(event("a"), b'data: {"error": {"message": "quota", "type": "x"}}\n\n'),
        # an error event whose data is not JSON
        ScriptedBody(b"event: error\ndata: plain words\n\n"),
    )
    client = routed_client()
    for message, event_type in (("boom", "error"), ("quota", "message")):
        stream = client.generate_stream("tiny_gpt", "x")
        assert next(stream).text == "a"
        with pytest.raises(APIStreamError) as caught:
            next(stream)
        assert (caught.value.error, caught.value.event) == (message, event_type)
    with pytest.raises(APIResponseValidationError, match="not JSON"):
        list(client.generate_stream("tiny_gpt", "x"))


def test_malformed_streams(router: respx.Router, routed_client: ClientFactory) -> None:
    scripted(
        router,
        ScriptedBody(event("a"), event("b")),  # ends without its last event
        ScriptedBody(b'data: {"text_output": 3}\n\n'),
        ScriptedBody(b"data: [1, 2]\n\n"),
        ScriptedBody(),  # no event at all
    )
    client = routed_client()
    stream = client.generate_stream("tiny_gpt", "x")
    assert [c.text for c in (next(stream), next(stream))] == ["a", "b"]
    with pytest.raises(APIResponseValidationError, match="ended before its last event"):
        next(stream)
    for _ in range(3):
        with pytest.raises(APIResponseValidationError):
            client.generate_stream("tiny_gpt", "x").get_final()


def test_comments_and_openai_done_marker_are_skipped(
    router: respx.Router, routed_client: ClientFactory
) -> None:
    pieces = [b": hello\n\n", event("Hel"), b": ping\r\n\r\n", event("lo"), FINAL]
    stream_bytes = b"".join(pieces) + b"data: [DONE]\n\n"
    # the same bytes cut at every third byte
    cut = [stream_bytes[i : i + 3] for i in range(0, len(stream_bytes), 3)]
    scripted(router, ScriptedBody(*cut))
    with routed_client().generate_stream("tiny_gpt", "x") as stream:
        assert [c.text for c in stream] == ["Hel", "lo", ""]
        assert stream.get_final().text == "Hello"


async def test_scripted_retries_and_errors_async(
    router: respx.Router, routed_async_client: AsyncClientFactory, delays: Delays
) -> None:
    route = scripted(
        router,
        httpx.ConnectError("refused"),
        ScriptedBody(httpx.ReadError("reset before any event")),
        ScriptedBody(event("Hel"), event("lo"), FINAL),
        ScriptedBody(event("a"), httpx.ReadError("connection reset")),
        ScriptedBody(event("a"), b'event: error\ndata: {"error": "boom"}\n\n'),
    )
    aclient = routed_async_client()
    async with aclient.generate_stream("tiny_gpt", "x") as stream:
        assert (await stream.get_final()).text == "Hello"
    assert stream.attempts == 3 and delays == [0.5, 1.0]
    async with aclient.generate_stream("tiny_gpt", "x") as stream:
        assert (await stream.__anext__()).text == "a"
        with pytest.raises(APIConnectionError, match="connection reset"):
            await stream.__anext__()
    with pytest.raises(APIStreamError, match="boom"):
        async with aclient.generate_stream("tiny_gpt", "x") as stream:
            await stream.until_done()
    assert route.call_count == 5
