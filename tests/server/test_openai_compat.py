"""The ``openai`` package, unchanged, against the server's /v1 endpoints over the tiny GPT-2."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from tokenizers import Tokenizer

PROMPT = "Licensed under the Apache License"


@pytest.fixture
def client(generation_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{generation_url}/v1", api_key="not-checked", max_retries=0
    ) as client:
        yield client


def triton_generate(url: str, text: str, **parameters: object) -> dict[str, object]:
    body = {"text_input": text, **parameters}
    answer = httpx.post(f"{url}/v2/models/tiny_gpt/generate", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    result: dict[str, object] = answer.json()
    return result


def test_models(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert "tiny_gpt" in ids
    assert "mlp" not in ids  # not a text-generation model
    assert client.models.retrieve("tiny_gpt").id == "tiny_gpt"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("mlp")


def test_completion(client: openai.OpenAI, generation_url: str) -> None:
    completion = client.completions.create(model="tiny_gpt", prompt=PROMPT, max_tokens=12)
    reference = triton_generate(generation_url, PROMPT, max_tokens=12)
    assert completion.object == "text_completion"
    assert completion.model == "tiny_gpt"
    (choice,) = completion.choices
    assert choice.text == reference["text_output"]
    assert choice.finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 12
    assert completion.usage.prompt_tokens == reference["prompt_tokens"]
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 12


def test_completion_stream(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="tiny_gpt", prompt=PROMPT, max_tokens=20)
    chunks = list(
        client.completions.create(
            model="tiny_gpt",
            prompt=PROMPT,
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == "length"
    assert all(r is None for r in reasons[:-1])
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 20
    assert len({c.id for c in chunks}) == 1


def test_completion_several_prompts_and_choices(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model="tiny_gpt", prompt=["Copyright", "The software"], n=2, max_tokens=6, temperature=0
    )
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    texts = [c.text for c in completion.choices]
    assert texts[0] == texts[1] != texts[2] == texts[3]  # greedy: the choices of a prompt agree
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 24
    streamed = client.completions.create(
        model="tiny_gpt",
        prompt=["Copyright", "The software"],
        n=2,
        max_tokens=6,
        temperature=0,
        stream=True,
    )
    by_choice = ["", "", "", ""]
    for chunk in streamed:
        for choice in chunk.choices:
            by_choice[choice.index] += choice.text
    assert by_choice == texts


def test_completion_token_prompt(client: openai.OpenAI, tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(PROMPT).ids
    by_ids = client.completions.create(model="tiny_gpt", prompt=ids, max_tokens=6)
    by_text = client.completions.create(model="tiny_gpt", prompt=PROMPT, max_tokens=6)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage is not None
    assert by_ids.usage.prompt_tokens == len(ids)
    with pytest.raises(openai.BadRequestError, match="token ids"):
        client.completions.create(model="tiny_gpt", prompt=[5, 99999])


def test_completion_stop_and_seed(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="tiny_gpt", prompt=PROMPT, max_tokens=30).choices[0]
    stop = whole.text[10:13]
    stopped = client.completions.create(model="tiny_gpt", prompt=PROMPT, max_tokens=30, stop=stop)
    assert stopped.choices[0].text == whole.text[: whole.text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"
    kwargs = {"model": "tiny_gpt", "prompt": PROMPT, "max_tokens": 20, "temperature": 1.0}
    first = client.completions.create(**kwargs, seed=5).choices[0].text  # type: ignore[call-overload]
    again = client.completions.create(**kwargs, seed=5).choices[0].text  # type: ignore[call-overload]
    assert first == again


def test_chat_completion(client: openai.OpenAI, generation_url: str) -> None:
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is a license?"},
    ]
    chat = client.chat.completions.create(model="tiny_gpt", messages=messages, max_tokens=15)
    # tokenizer_config.json's chat template: "role: content" lines, then "assistant:"
    prompt = "system: Be brief.\nuser: What is a license?\nassistant:"
    reference = triton_generate(generation_url, prompt, max_tokens=15)
    assert chat.object == "chat.completion"
    (choice,) = chat.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == reference["text_output"]
    assert choice.finish_reason == "length"
    assert chat.usage is not None
    assert chat.usage.prompt_tokens == reference["prompt_tokens"]
    newer = client.chat.completions.create(
        model="tiny_gpt", messages=messages, max_completion_tokens=15
    )
    assert newer.choices[0].message.content == choice.message.content


def test_chat_completion_stream(client: openai.OpenAI) -> None:
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": [{"type": "text", "text": "Hello"}]}
    ]
    whole = client.chat.completions.create(model="tiny_gpt", messages=messages, max_tokens=20)
    chunks = list(
        client.chat.completions.create(
            model="tiny_gpt",
            messages=messages,
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == "length"
    assert chunks[-1].object == "chat.completion.chunk"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 20


async def test_async_client_stream(generation_url: str) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{generation_url}/v1", api_key="x", max_retries=0
    ) as client:
        stream = await client.completions.create(
            model="tiny_gpt", prompt="Copyright", max_tokens=8, stream=True
        )
        text = ""
        async for chunk in stream:
            text += chunk.choices[0].text
        whole = await client.completions.create(model="tiny_gpt", prompt="Copyright", max_tokens=8)
    assert text == whole.choices[0].text


def test_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="nope", prompt="a")
    assert "nope" in missing.value.message
    with pytest.raises(openai.BadRequestError, match="not a text-generation model"):
        client.completions.create(model="mlp", prompt="a")
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="tiny_gpt", prompt="a", temperature=-1)
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.completions.create(model="tiny_gpt", prompt="a", logprobs=2)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="tiny_gpt", messages=[])
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="tiny_gpt", prompt="Copyright " * 300, stream=True)
    with pytest.raises(openai.InternalServerError, match="cannot generate"):
        client.completions.create(model="no_tokenizer", prompt="a")


def test_error_shape(generation_url: str) -> None:
    answer = httpx.post(f"{generation_url}/v1/completions", json={"model": "nope", "prompt": "a"})
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    bad = httpx.post(f"{generation_url}/v1/chat/completions", content=b"[")
    assert bad.status_code == 400
    assert "JSON" in bad.json()["error"]["message"]


async def test_model_allow_list_applies_to_body_routes(
    generation_repository: Path, tmp_path: Path
) -> None:
    """The /v1 routes name the model in the body, out of the middleware's sight: a key limited
    to other models is refused there too, and /v1/models lists only what the key may use."""
    from maas_server import Settings
    from maas_server.keys_file import add_key
    from tests.server.apps import asgi_app, bearer

    keys = tmp_path / "keys.json"
    narrow, _ = add_key(keys, "narrow", ["infer", "read"], models=["tiny_gpt_spare"])
    wide, _ = add_key(keys, "wide", ["infer", "read"])
    settings = Settings(repository=generation_repository, api_keys_file=keys)
    async with asgi_app(settings, models=("tiny_gpt", "tiny_gpt_spare")) as (_, client):
        body = {"model": "tiny_gpt", "prompt": "Licensed", "max_tokens": 2}
        refused = await client.post("/v1/completions", json=body, headers=bearer(narrow))
        assert refused.status_code == 403
        assert "tiny_gpt" in refused.json()["error"]["message"] or "tiny_gpt" in refused.text
        allowed = await client.post("/v1/completions", json=body, headers=bearer(wide))
        assert allowed.status_code == 200, allowed.text
        chat = {"model": "tiny_gpt", "messages": [{"role": "user", "content": "hi"}]}
        assert (
            await client.post("/v1/chat/completions", json=chat, headers=bearer(narrow))
        ).status_code == 403
        listed = (await client.get("/v1/models", headers=bearer(narrow))).json()
        assert [m["id"] for m in listed["data"]] == ["tiny_gpt_spare"]
