"""The generate and OpenAI requests are wire models, and their schemas are in the OpenAPI
document the server serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maas_server import Settings
from maas_wire.generate import GenerateRequest
from maas_wire.openai import ChatCompletionRequest, CompletionRequest
from tests.server.apps import asgi_app

REF = "#/components/schemas/{}"


async def _document(repository: Path) -> dict[str, Any]:
    async with asgi_app(Settings(repository=repository), models=()) as (_, client):
        answer = await client.get("/v2/openapi.json")
    assert answer.status_code == 200
    document: dict[str, Any] = answer.json()
    return document


def _request_schema(operation: dict[str, Any]) -> Any:
    return operation["requestBody"]["content"]["application/json"]["schema"]


async def test_generate_and_openai_requests_have_schemas(repository: Path) -> None:
    document = await _document(repository)
    paths, schemas = document["paths"], document["components"]["schemas"]
    expected = {
        "/v2/models/{model}/generate": "GenerateRequest",
        "/v2/models/{model}/versions/{version}/generate": "GenerateRequest",
        "/v2/models/{model}/generate_stream": "GenerateRequest",
        "/v1/completions": "CompletionRequest",
        "/v1/chat/completions": "ChatCompletionRequest",
    }
    for path, model in expected.items():
        operation = paths[path]["post"]
        assert _request_schema(operation) == {"$ref": REF.format(model)}, path
        assert operation["requestBody"]["required"] is True, path
        assert model in schemas
    generate = paths["/v2/models/{model}/generate"]["post"]
    ok = generate["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": REF.format("GenerateResponse")}
    stream = paths["/v2/models/{model}/generate_stream"]["post"]["responses"]["200"]["content"]
    assert "text/event-stream" in stream
    # the schemas are the wire models' own, fields and constraints included
    generate_schema = schemas["GenerateRequest"]
    assert generate_schema["required"] == ["text_input"]
    assert {"text_input", "max_tokens", "temperature", "stop", "parameters"} <= set(
        generate_schema["properties"]
    )
    assert set(schemas["CompletionRequest"]["required"]) == {"model", "prompt"}
    assert set(schemas["ChatCompletionRequest"]["required"]) == {"model", "messages"}
    n = schemas["CompletionRequest"]["properties"]["n"]["anyOf"][0]
    assert (n["minimum"], n["maximum"]) == (1, 16)
    # routes whose fields are all optional keep an optional body
    assert paths["/v2/repository/index"]["post"]["requestBody"]["required"] is False


def test_wire_models_validate_what_the_server_refuses() -> None:
    request = GenerateRequest.model_validate(
        {"text_input": "a", "max_tokens": 4.0, "parameters": {"max_tokens": 8, "stop": "x"}}
    )
    assert request.sampling()["max_tokens"] == 8  # "parameters" wins
    assert request.sampling()["stop"] == ["x"]
    assert not request.wants_token_ids
    completion = CompletionRequest.model_validate(
        {"model": "m", "prompt": [[1, 2], [3]], "n": 2, "stream": True}
    )
    assert completion.prompts() == [[1, 2], [3]]
    assert completion.prompt_count == 2
    assert CompletionRequest.model_validate({"model": "m", "prompt": [5, 6]}).prompt_count == 1
    chat = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    )
    assert chat.token_limit == 3
    assert CompletionRequest.model_validate(
        {"model": "m", "prompt": "a", "logprobs": 2, "best_of": 3}
    ).unsupported() == ["logprobs", "best_of"]
