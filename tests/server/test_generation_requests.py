"""Generate and OpenAI requests are validated by the wire models: each bad value is a 400 that
names the field, before anything is generated; a good request after them still works."""

from __future__ import annotations

from typing import Any

import httpx
import pytest


def _message(answer: httpx.Response) -> str:
    error = answer.json()["error"]
    return str(error["message"] if isinstance(error, dict) else error)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"text_input": "a", "max_tokens": True}, "max_tokens"),
        ({"text_input": "a", "max_tokens": "8"}, "max_tokens"),
        ({"text_input": "a", "max_tokens": 2.5}, "max_tokens"),
        ({"text_input": "a", "temperature": "hot"}, "temperature"),
        ({"text_input": "a", "seed": 2**64}, "seed"),
        ({"text_input": "a", "id": 5}, "id"),
        ({"text_input": "a", "return_token_ids": "yes"}, "return_token_ids"),
        ({"text_input": "a", "parameters": {"top_p": 2}}, "parameters.top_p"),
        ({"text_input": ["a"]}, "text_input"),
    ],
)
def test_generate_request_refusals_name_the_field(
    generation_url: str, body: dict[str, Any], fragment: str
) -> None:
    answer = httpx.post(f"{generation_url}/v2/models/tiny_gpt/generate", json=body)
    assert answer.status_code == 400, answer.text
    assert fragment in _message(answer)


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/v1/completions", {"prompt": "a"}, "model"),
        ("/v1/completions", {"model": "", "prompt": "a"}, "model"),
        ("/v1/completions", {"model": "tiny_gpt"}, "prompt"),
        ("/v1/completions", {"model": "tiny_gpt", "prompt": []}, "prompt"),
        ("/v1/completions", {"model": "tiny_gpt", "prompt": [1, True]}, "prompt"),
        ("/v1/completions", {"model": "tiny_gpt", "prompt": ["a", 1]}, "prompt"),
        ("/v1/completions", {"model": "tiny_gpt", "prompt": "a", "n": 0}, "n"),
        ("/v1/completions", {"model": "tiny_gpt", "prompt": "a", "n": 17}, "n"),
        ("/v1/completions", {"model": "tiny_gpt", "prompt": "a", "stream": "yes"}, "stream"),
        (
            "/v1/completions",
            {"model": "tiny_gpt", "prompt": "a", "stream_options": {"include_usage": 1}},
            "stream_options.include_usage",
        ),
        ("/v1/completions", {"model": "tiny_gpt", "prompt": "a", "best_of": 2}, "best_of"),
        (
            "/v1/completions",
            {"model": "tiny_gpt", "prompt": "a", "response_format": {"type": "json_object"}},
            "response_format",
        ),
        ("/v1/chat/completions", {"model": "tiny_gpt", "messages": []}, "messages"),
        ("/v1/chat/completions", {"model": "tiny_gpt", "messages": [{"content": "x"}]}, "role"),
        (
            "/v1/chat/completions",
            {"model": "tiny_gpt", "messages": [{"role": "user"}], "max_completion_tokens": 0},
            "max_completion_tokens",
        ),
    ],
)
def test_openai_request_refusals_name_the_field(
    generation_url: str, path: str, body: dict[str, Any], fragment: str
) -> None:
    answer = httpx.post(f"{generation_url}{path}", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert fragment in _message(answer)


def test_good_requests_after_refusals(generation_url: str) -> None:
    generate = httpx.post(
        f"{generation_url}/v2/models/tiny_gpt/generate",
        json={"text_input": "Copyright", "max_tokens": 3.0, "return_token_ids": True},
        timeout=30,
    )
    assert generate.status_code == 200, generate.text
    assert len(generate.json()["token_ids"]) == 3
    completion = httpx.post(
        f"{generation_url}/v1/completions",
        json={"model": "tiny_gpt", "prompt": [[464, 37]], "max_tokens": 2, "n": 2},
        timeout=30,
    )
    assert completion.status_code == 200, completion.text
    assert len(completion.json()["choices"]) == 2
