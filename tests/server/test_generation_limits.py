"""Load caps of generation: sequences per request (prompts x n), sequences waiting per model
(503 + Retry-After), the default cap on ``max_tokens``, and the request deadline on streams.

Each test runs the real app in-process over the tiny GPT-2. Where a test needs the engine to
hold still, its ``_execute`` waits on a gate that the test opens: the state the test checks is
read from the engine itself (polled with a deadline), never assumed after a sleep.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from maas_server import Settings
from maas_server.config import GenerationConfig
from maas_server.generation import GenerationEngine
from tests.server.apps import asgi_app
from tests.server.conftest import TINY_GPT, _copy_model

CAPS = {"max_request_sequences": 3, "max_waiting_sequences": 2, "max_batch_size": 1}


@pytest.fixture(scope="module")
def capped_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("capped_generation")
    base = json.loads((TINY_GPT / "config.json").read_text())
    generation = {**base["generation"], **CAPS}
    _copy_model(root, "capped", {**base, "generation": generation}, None)
    unbounded = {k: v for k, v in base["generation"].items() if k != "context_length"}
    _copy_model(root, "no_context", {**base, "generation": unbounded}, None)
    _copy_model(
        root, "no_context_50", {**base, "generation": {**unbounded, "max_tokens_limit": 50}}, None
    )
    return root


@asynccontextmanager
async def app_client(
    repository: Path, models: tuple[str, ...] = ("capped",), **settings: Any
) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    async with asgi_app(Settings(repository=repository, **settings), models=models) as pair:
        yield pair


def engine_of(app: Starlette, model: str) -> GenerationEngine:
    engine: GenerationEngine = app.state.generation.engine(model, None)
    return engine


@contextmanager
def gated(engine: GenerationEngine, free_runs: int) -> Iterator[threading.Event]:
    """Let ``free_runs`` session runs through, then hold every further one until the gate
    opens (always opened on exit, so no engine thread is left waiting)."""
    gate = threading.Event()
    original = engine._execute
    runs = 0

    def execute(*args: Any) -> Any:
        nonlocal runs
        runs += 1
        if runs > free_runs:
            assert gate.wait(30), "the test never opened the gate"
        return original(*args)

    engine._execute = execute  # type: ignore[method-assign]
    try:
        yield gate
    finally:
        gate.set()
        del engine._execute  # the class's method again


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for the server's state to satisfy ``predicate`` (polled, bounded)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("the server never reached the expected state")
        await asyncio.sleep(0.005)


def _message(answer: httpx.Response) -> str:
    error = answer.json()["error"]
    return str(error["message"] if isinstance(error, dict) else error)


# --- prompts x n --------------------------------------------------------------------------------


async def test_prompts_times_n_over_the_cap_is_a_400_before_tokenizing(
    capped_repository: Path,
) -> None:
    async with app_client(capped_repository) as (app, client):
        engine = engine_of(app, "capped")
        encoded: list[str] = []
        original = engine.encode

        def encode(text: str, **kwargs: Any) -> list[int]:
            encoded.append(text)
            return original(text, **kwargs)

        engine.encode = encode  # type: ignore[method-assign]
        body = {"model": "capped", "prompt": ["a", "b"], "n": 2, "max_tokens": 2}
        refused = await client.post("/v1/completions", json=body)
        assert refused.status_code == 400, refused.text
        assert "4 sequences" in _message(refused)
        assert "at most 3" in _message(refused)
        many = {"model": "capped", "prompt": ["x"] * 10_000, "max_tokens": 1}
        assert (await client.post("/v1/completions", json=many)).status_code == 400
        chat = {"model": "capped", "messages": [{"role": "user", "content": "hi"}], "n": 4}
        assert (await client.post("/v1/chat/completions", json=chat)).status_code == 400
        assert encoded == []  # refused before any prompt was tokenized
        assert engine.active_sequences == 0
        good = {"model": "capped", "prompt": ["a", "b", "c"], "n": 1, "max_tokens": 2}
        ok = await client.post("/v1/completions", json=good)
        assert ok.status_code == 200, ok.text
        assert len(ok.json()["choices"]) == 3


# --- sequences waiting --------------------------------------------------------------------------


async def test_waiting_sequences_over_the_bound_get_503_with_retry_after(
    capped_repository: Path,
) -> None:
    async with app_client(capped_repository) as (app, client):
        engine = engine_of(app, "capped")
        body = {"text_input": "Copyright", "max_tokens": 3, "ignore_eos": True}
        with gated(engine, free_runs=1) as gate:  # the first sequence's prefill, then hold
            first = asyncio.ensure_future(client.post("/v2/models/capped/generate", json=body))
            await until(lambda: engine.steps == 1 and engine.active_sequences == 1)
            waiting = [
                asyncio.ensure_future(client.post("/v2/models/capped/generate", json=body))
                for _ in range(2)
            ]
            await until(lambda: engine.waiting_sequences == 2)
            refused = await client.post("/v2/models/capped/generate", json=body)
            assert refused.status_code == 503, refused.text
            assert int(refused.headers["Retry-After"]) >= 1
            assert "limit of 2 sequences waiting" in _message(refused)
            # the OpenAI routes share the bound, all of a request's sequences or none
            openai = {"model": "capped", "prompt": "a", "n": 1, "max_tokens": 1}
            refused = await client.post("/v1/completions", json=openai)
            assert refused.status_code == 503
            assert "Retry-After" in refused.headers
            assert refused.json()["error"]["type"] == "service_unavailable"
            assert engine.waiting_sequences == 2
            gate.set()
            answers = await asyncio.gather(first, *waiting)
        assert [a.status_code for a in answers] == [200, 200, 200]
        await until(lambda: engine.active_sequences == 0 and engine.waiting_sequences == 0)
        again = await client.post("/v2/models/capped/generate", json=body)
        assert again.status_code == 200
        assert again.json()["completion_tokens"] == 3


async def test_cancelled_waiting_sequences_leave_the_bound(capped_repository: Path) -> None:
    async with app_client(capped_repository) as (app, client):
        engine = engine_of(app, "capped")
        body = {"text_input": "Copyright", "max_tokens": 3, "ignore_eos": True}
        with gated(engine, free_runs=1) as gate:
            first = asyncio.ensure_future(client.post("/v2/models/capped/generate", json=body))
            await until(lambda: engine.steps == 1)
            params = engine.params({"max_tokens": 2})
            streams = [engine.submit(engine.encode("a"), params) for _ in range(2)]
            assert engine.waiting_sequences == 2
            for stream in streams:
                stream.cancel()
            assert engine.waiting_sequences == 0
            gate.set()
            assert (await first).status_code == 200
        await until(lambda: engine.active_sequences == 0)


# --- max_tokens ---------------------------------------------------------------------------------


def test_max_tokens_has_a_default_cap() -> None:
    assert GenerationConfig().max_tokens_limit == 4096


async def test_max_tokens_over_the_cap_is_a_400_without_context_length(
    capped_repository: Path,
) -> None:
    models = ("no_context", "no_context_50")
    async with app_client(capped_repository, models=models) as (_, client):
        for model, cap in (("no_context", 4096), ("no_context_50", 50)):
            for path, body in (
                (f"/v2/models/{model}/generate", {"text_input": "a", "max_tokens": cap + 1}),
                (f"/v2/models/{model}/generate_stream", {"text_input": "a", "max_tokens": cap + 1}),
                ("/v1/completions", {"model": model, "prompt": "a", "max_tokens": cap + 1}),
            ):
                refused = await client.post(path, json=body)
                assert refused.status_code == 400, (path, refused.text)
                assert f"at most {cap} tokens" in _message(refused)
        ok = await client.post(
            "/v2/models/no_context_50/generate",
            json={"text_input": "a", "max_tokens": 50, "ignore_eos": True},
        )
        assert ok.status_code == 200
        assert ok.json()["completion_tokens"] == 50


# --- the request deadline on streams ------------------------------------------------------------


def _sse(text: str) -> list[tuple[str | None, str]]:
    events = []
    for block in text.strip().split("\n\n"):
        kind = None
        data = ""
        for line in block.splitlines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        events.append((kind, data))
    return events


async def test_request_deadline_ends_a_started_stream_with_an_error_event(
    capped_repository: Path,
) -> None:
    async with app_client(capped_repository, request_timeout_s=1.0) as (app, client):
        engine = engine_of(app, "capped")
        body = {"text_input": "Copyright", "max_tokens": 200, "ignore_eos": True}
        with gated(engine, free_runs=3):  # prefill and two steps, then the model stalls
            answer = await client.post("/v2/models/capped/generate_stream", json=body)
            assert answer.status_code == 200
            events = _sse(answer.text)
            assert len(events) >= 2
            kind, data = events[-1]
            assert kind == "error"
            assert "request deadline of 1 s" in json.loads(data)["error"]
            assert all(k is None for k, _ in events[:-1])
            assert all("finish_reason" not in json.loads(d) for _, d in events[:-1])
        # the stream ended at the deadline while the model was still stalled; once it moves
        # on, the cancelled sequence leaves the engine
        await until(lambda: engine.active_sequences == 0)
        with gated(engine, free_runs=3):
            openai = {"model": "capped", "prompt": "Copyright", "max_tokens": 200, "stream": True}
            answer = await client.post("/v1/completions", json=openai)
            assert answer.status_code == 200
            events = _sse(answer.text)
            assert "deadline" in json.loads(events[-1][1])["error"]["message"]
            assert "[DONE]" not in answer.text
        await until(lambda: engine.active_sequences == 0)
        short = {"text_input": "Copyright", "max_tokens": 4, "ignore_eos": True}
        ok = await client.post("/v2/models/capped/generate_stream", json=short)
        last = json.loads(_sse(ok.text)[-1][1])
        assert last["finish_reason"] == "length"
        assert last["completion_tokens"] == 4
