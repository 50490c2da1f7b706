"""``generate`` and ``generate_stream`` against a real server with the example ``tiny_gpt``
(greedy by default), through both transports, sync and async side by side."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from maas_client import (
    AsyncClient,
    AsyncGenerationStream,
    BadRequestError,
    Client,
    Generation,
    GenerationChunk,
    GenerationStream,
    InputError,
    ModelNotFoundError,
)
from maas_client._generation import plan_generate
from tests.client.conftest import ClientFactory

PROMPT = "Licensed under the"


@pytest.fixture
def client(generation_url: str) -> Iterator[Client]:
    with Client(generation_url) as client:
        yield client


def same_generation(a: Generation, b: Generation) -> None:
    skip = {"timing", "request_id"}
    assert a.model_dump(exclude=skip) == b.model_dump(exclude=skip)


# --- generate equals the stream --------------------------------------------------------------


def test_generate_equals_the_concatenated_stream(make_generation_client: ClientFactory) -> None:
    client = make_generation_client()
    whole = client.generate("tiny_gpt", PROMPT, max_tokens=24, return_token_ids=True)
    assert whole.finish_reason == "length"
    assert (whole.prompt_tokens, whole.completion_tokens) == (5, 24)
    assert whole.model_name == "tiny_gpt" and whole.model_version == "1"
    assert whole.token_ids is not None and len(whole.token_ids) == 24
    assert whole.timing.attempts == 1 and whole.timing.seconds > 0
    assert whole.request_id

    with client.generate_stream("tiny_gpt", PROMPT, max_tokens=24, return_token_ids=True) as stream:
        assert isinstance(stream, GenerationStream)
        chunks: list[GenerationChunk] = []
        for chunk in stream:
            chunks.append(chunk)
            assert stream.text == "".join(c.text for c in chunks)
        final = stream.get_final()
    assert len(chunks) > 2
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert "".join(c.text for c in chunks) == whole.text == final.text
    assert [t for c in chunks for t in c.token_ids or []] == whole.token_ids
    assert all(c.finish_reason is None for c in chunks[:-1])
    last = chunks[-1]
    assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == ("length", 5, 24)
    assert stream.finish_reason == "length"
    same_generation(final, whole)
    assert final.request_id == stream.request_id
    assert 0 < final.timing.seconds < 30 and final.timing.attempts == 1


def test_greedy_decoding_is_deterministic(client: Client) -> None:
    first = client.generate("tiny_gpt", "Copyright", max_tokens=16)
    again = client.generate("tiny_gpt", "Copyright", max_tokens=16, temperature=0)
    same_generation(first, again)
    with client.generate_stream("tiny_gpt", "Copyright", max_tokens=16) as stream:
        assert stream.get_final().text == first.text


def test_seeded_sampling_is_reproducible(client: Client) -> None:
    params: dict[str, Any] = {"max_tokens": 16, "temperature": 0.8, "top_p": 0.95, "seed": 7}
    first = client.generate("tiny_gpt", PROMPT, **params)
    again = client.generate("tiny_gpt", PROMPT, **params)
    assert first.text == again.text
    with client.generate_stream("tiny_gpt", PROMPT, **params) as stream:
        assert stream.get_final().text == first.text
    top_k_one = client.generate("tiny_gpt", PROMPT, max_tokens=16, temperature=1.0, top_k=1)
    assert top_k_one.text == client.generate("tiny_gpt", PROMPT, max_tokens=16).text


def test_max_tokens_and_the_models_default(client: Client) -> None:
    for max_tokens in (1, 5):
        result = client.generate("tiny_gpt", PROMPT, max_tokens=max_tokens)
        assert (result.completion_tokens, result.finish_reason) == (max_tokens, "length")
    default = client.generate("tiny_gpt", PROMPT)  # the model's configuration says 32
    assert default.completion_tokens == 32


def test_stop_strings_end_the_generation(client: Client) -> None:
    greedy = client.generate("tiny_gpt", PROMPT, max_tokens=24)
    stop = greedy.text[6:9]
    assert stop and stop in greedy.text
    expected = greedy.text[: greedy.text.index(stop)]
    for given in (stop, [stop], ["never appears", stop]):
        result = client.generate("tiny_gpt", PROMPT, max_tokens=24, stop=given)
        assert (result.text, result.finish_reason) == (expected, "stop")
        with client.generate_stream("tiny_gpt", PROMPT, max_tokens=24, stop=given) as stream:
            chunks = list(stream)
        assert "".join(c.text for c in chunks) == expected
        assert chunks[-1].finish_reason == "stop"


def test_parameters_reach_the_server(client: Client) -> None:
    result = client.generate(
        "tiny_gpt", PROMPT, max_tokens=40, parameters={"ignore_eos": True}, version=1
    )
    assert result.completion_tokens == 40
    with pytest.raises(InputError, match="'max_tokens' is given twice"):
        client.generate("tiny_gpt", PROMPT, max_tokens=4, parameters={"max_tokens": 5})
    with pytest.raises(TypeError, match="'max_token'"):
        client.generate("tiny_gpt", PROMPT, max_token=4)  # type: ignore[call-arg]
    with pytest.raises(InputError, match="prompt is a string"):
        client.generate("tiny_gpt", ["not", "a", "string"])  # type: ignore[arg-type]


def test_ids_and_call_options(client: Client) -> None:
    result = client.generate(
        "tiny_gpt", PROMPT, max_tokens=2, id="req-1", request_id="call-1", timeout=10.0
    )
    assert (result.id, result.request_id) == ("req-1", "call-1")
    with client.generate_stream(
        "tiny_gpt", PROMPT, max_tokens=2, id="req-2", request_id="call-2", max_retries=0
    ) as stream:
        chunks = list(stream)
        final = stream.get_final()
    assert {c.id for c in chunks} == {"req-2"}
    assert (final.id, final.request_id, stream.request_id) == ("req-2", "call-2", "call-2")


def test_the_request_body() -> None:
    plan, options = plan_generate(
        "tiny gpt",
        2,
        "hi",
        {
            "max_tokens": 3,
            "temperature": None,
            "stop": ("a", "b"),
            "return_token_ids": True,
            "parameters": {"ignore_eos": True},
            "timeout": 5.0,
        },
        stream=True,
    )
    assert plan.path == "/v2/models/tiny%20gpt/versions/2/generate_stream"
    assert plan.headers["Accept"] == "text/event-stream"
    assert isinstance(plan.content, bytes)
    assert orjson.loads(plan.content) == {
        "text_input": "hi",
        "max_tokens": 3,
        "stop": ["a", "b"],
        "return_token_ids": True,
        "parameters": {"ignore_eos": True},
    }
    assert options == {"timeout": 5.0}
    plain, _ = plan_generate("m", None, "", {"stop": "x"}, stream=False)
    assert plain.path == "/v2/models/m/generate" and "Accept" not in plain.headers
    assert isinstance(plain.content, bytes)
    assert orjson.loads(plain.content) == {"text_input": "", "stop": "x"}


# --- errors before the first event are HTTP errors --------------------------------------------


def test_errors_before_the_first_event(make_generation_client: ClientFactory) -> None:
    client = make_generation_client()
    for call in (client.generate, client.generate_stream):
        with pytest.raises(BadRequestError, match="top_p") as bad:
            call("tiny_gpt", PROMPT, top_p=2.0)
        assert bad.value.status_code == 400 and bad.value.attempts == 1
        with pytest.raises(ModelNotFoundError) as missing:
            call("no_such_model", PROMPT)
        assert missing.value.model == "no_such_model"
        with pytest.raises(BadRequestError, match="not a text-generation model"):
            call("digits", PROMPT)


# --- async twins -----------------------------------------------------------------------------


async def test_async_twins_agree_with_sync(client: Client, generation_url: str) -> None:
    expected = client.generate("tiny_gpt", PROMPT, max_tokens=20, return_token_ids=True)
    async with AsyncClient(generation_url) as aclient:
        whole = await aclient.generate("tiny_gpt", PROMPT, max_tokens=20, return_token_ids=True)
        same_generation(whole, expected)

        async with aclient.generate_stream(
            "tiny_gpt", PROMPT, max_tokens=20, return_token_ids=True
        ) as stream:
            assert isinstance(stream, AsyncGenerationStream)
            chunks = [chunk async for chunk in stream]
            final = await stream.get_final()
        assert "".join(c.text for c in chunks) == expected.text == stream.text
        assert chunks[-1].finish_reason == "length"
        same_generation(final, expected)

        # awaiting the stream opens it too
        opened = await aclient.generate_stream("tiny_gpt", PROMPT, max_tokens=20)
        same_generation(await opened.get_final(), expected.model_copy(update={"token_ids": None}))

        with pytest.raises(BadRequestError, match="top_p"):
            async with aclient.generate_stream("tiny_gpt", PROMPT, top_p=0):
                pass
        with pytest.raises(ModelNotFoundError):
            await aclient.generate("no_such_model", PROMPT)


async def test_async_streams_run_together(client: Client, generation_url: str) -> None:
    prompts = ["Copyright", "The software is provided", "Mozilla Public License", "a"]
    expected = [client.generate("tiny_gpt", p, max_tokens=12).text for p in prompts]

    async def streamed(aclient: AsyncClient, prompt: str) -> str:
        async with aclient.generate_stream("tiny_gpt", prompt, max_tokens=12) as stream:
            return "".join([chunk.text async for chunk in stream])

    async with AsyncClient(generation_url) as aclient:
        texts = await asyncio.gather(*(streamed(aclient, p) for p in prompts))
    assert texts == expected


async def test_async_stream_on_an_injected_httpx_client(generation_url: str) -> None:
    async with (
        httpx.AsyncClient(timeout=30.0) as http,
        AsyncClient(generation_url, http_client=http) as aclient,
    ):
        whole = await aclient.generate("tiny_gpt", PROMPT, max_tokens=10)
        async with aclient.generate_stream("tiny_gpt", PROMPT, max_tokens=10) as stream:
            final = await stream.get_final()
    same_generation(final, whole)
