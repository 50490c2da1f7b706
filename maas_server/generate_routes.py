"""Triton's generate extension: ``POST /v2/models/{m}[/versions/{v}]/generate`` (one JSON
answer) and ``.../generate_stream`` (server-sent events).

A request is a JSON object: ``text_input`` and the parameters, either at the top level (Triton's
way) or under ``"parameters"``: ``max_tokens``, ``temperature``, ``top_k``, ``top_p``, ``seed``,
``stop`` (a string or a list), ``ignore_eos``, and ``return_token_ids`` to get the ids of the
tokens beside the text. Unknown keys are ignored.

The stream sends one ``data: {"model_name", "model_version", "text_output"}`` event per new piece
of text, then a last event with ``finish_reason`` (``"stop"`` or ``"length"``),
``prompt_tokens`` and ``completion_tokens`` (and an empty ``text_output``). An error before the
first event is an ordinary HTTP error; after it, an ``event: error`` with ``{"error": ...}`` ends
the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .errors import BadRequestError, InternalError, ServerError
from .generation import GenerationEngine, GenerationService
from .generation_stream import GenerationEvent, GenerationResult, GenerationStream
from .routes import JSONBytesResponse, read_body
from .sse import EventStreamResponse, sse_event, watch_disconnect

__all__ = ["collect_until_disconnect", "generate_routes", "json_object", "service"]

_RESERVED = ("text_input", "parameters", "id")


def service(request: Request) -> GenerationService:
    generation: GenerationService = request.app.state.generation
    return generation


async def json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object (400 otherwise)."""
    body = await read_body(request, request.app.state.dataplane.settings.max_body_bytes)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequestError("request body must be a JSON object")
    return data


async def collect_until_disconnect(
    request: Request, streams: list[GenerationStream]
) -> list[GenerationResult] | None:
    """Every stream's whole result, or None when the client left first (the streams are then
    cancelled at once)."""
    gone = asyncio.Event()

    def cancel() -> None:
        gone.set()
        for stream in streams:
            stream.cancel()

    watcher = asyncio.get_running_loop().create_task(watch_disconnect(request.receive, cancel))
    try:
        return list(await asyncio.gather(*(s.collect() for s in streams)))
    except ServerError:
        if gone.is_set():
            return None
        raise
    finally:
        watcher.cancel()
        for stream in streams:
            stream.cancel()


def _parse(body: dict[str, Any]) -> tuple[str, dict[str, Any], bool, Any]:
    text = body.get("text_input")
    if not isinstance(text, str):
        raise BadRequestError("the request needs 'text_input', a string")
    parameters = body.get("parameters")
    if parameters is None:
        parameters = {}
    elif not isinstance(parameters, dict):
        raise BadRequestError("'parameters' must be a JSON object")
    values = {k: v for k, v in body.items() if k not in _RESERVED}
    values.update(parameters)
    return_ids = values.get("return_token_ids", False)
    if not isinstance(return_ids, bool):
        raise BadRequestError("parameter 'return_token_ids' must be true or false")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequestError("'id' must be a string")
    return text, values, return_ids, request_id


def _start(
    request: Request, body: dict[str, Any]
) -> tuple[GenerationEngine, GenerationStream, bool, str | None]:
    engine = service(request).engine(request.path_params["model"], _version(request))
    text, values, return_ids, request_id = _parse(body)
    params = engine.params(values)
    return engine, engine.submit(engine.encode(text), params), return_ids, request_id


def _version(request: Request) -> str | None:
    version: str | None = request.path_params.get("version")
    return version


def _answer(
    engine: GenerationEngine,
    event: GenerationEvent | GenerationResult,
    return_ids: bool,
    request_id: str | None,
) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "model_name": engine.model_name,
        "model_version": engine.model_version,
        "text_output": event.text,
    }
    if request_id is not None:
        answer["id"] = request_id
    if return_ids:
        answer["token_ids"] = event.token_ids
    if event.finish_reason is not None:
        answer["finish_reason"] = event.finish_reason
        answer["prompt_tokens"] = event.prompt_tokens
        answer["completion_tokens"] = event.completion_tokens
    return answer


async def generate(request: Request) -> Response:
    body = await json_object(request)
    engine, stream, return_ids, request_id = _start(request, body)
    results = await collect_until_disconnect(request, [stream])
    if results is None:
        return Response(status_code=499)
    return JSONBytesResponse(_answer(engine, results[0], return_ids, request_id))


async def generate_stream(request: Request) -> Response:
    body = await json_object(request)
    engine, stream, return_ids, request_id = _start(request, body)
    chunks = stream.chunks()
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        raise InternalError("the generation ended before its first event") from None
    except BaseException:
        stream.cancel()
        raise

    # a piece of text is the same JSON every time but for the text: build that part once
    head = _answer(engine, GenerationEvent("", []), False, request_id)
    del head["text_output"]
    piece_prefix = b"data: " + orjson.dumps(head)[:-1] + b',"text_output":'

    def encode(events: list[GenerationEvent]) -> bytes:
        out = []
        for event in events:
            if event.finish_reason is None and not return_ids:
                out.append(piece_prefix + orjson.dumps(event.text) + b"}\n\n")
            else:
                out.append(sse_event(_answer(engine, event, return_ids, request_id)))
        return b"".join(out)

    async def events() -> AsyncIterator[bytes]:
        try:
            yield encode(first)
            async for ready in chunks:
                yield encode(ready)
        except ServerError as exc:
            yield sse_event({"error": exc.message}, event="error")
        finally:
            stream.cancel()
            await chunks.aclose()

    return EventStreamResponse(events(), on_disconnect=stream.cancel)


generate_routes: list[Route] = [
    Route(f"/v2/models/{{model}}{prefix}/{name}", endpoint, methods=["POST"])
    for prefix in ("", "/versions/{version}")
    for name, endpoint in (("generate", generate), ("generate_stream", generate_stream))
]
