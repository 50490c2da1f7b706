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

from maas_wire.generate import GenerateRequest, GenerateResponse

from .errors import InternalError, ServerError
from .generation import GenerationEngine, GenerationService
from .generation_stream import GenerationEvent, GenerationResult, GenerationStream
from .request_body import read_message
from .routes import JSONBytesResponse
from .sse import EventStreamResponse, StreamDeadline, sse_event, watch_disconnect

__all__ = ["collect_until_disconnect", "generate_routes", "service"]


def service(request: Request) -> GenerationService:
    generation: GenerationService = request.app.state.generation
    return generation


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


def _start(request: Request, body: GenerateRequest) -> tuple[GenerationEngine, GenerationStream]:
    engine = service(request).engine(request.path_params["model"], _version(request))
    params = engine.params(body.sampling())
    return engine, engine.submit(engine.encode(body.text_input), params)


def _version(request: Request) -> str | None:
    version: str | None = request.path_params.get("version")
    return version


def _answer(
    engine: GenerationEngine,
    event: GenerationEvent | GenerationResult,
    body: GenerateRequest,
) -> dict[str, Any]:
    last = event.finish_reason is not None
    return GenerateResponse(
        model_name=engine.model_name,
        model_version=engine.model_version,
        id=body.id,
        text_output=event.text,
        token_ids=event.token_ids if body.wants_token_ids else None,
        finish_reason=event.finish_reason,
        prompt_tokens=event.prompt_tokens if last else None,
        completion_tokens=event.completion_tokens if last else None,
    ).wire()


async def generate(request: Request) -> Response:
    body = await read_message(request, GenerateRequest)
    engine, stream = _start(request, body)
    results = await collect_until_disconnect(request, [stream])
    if results is None:
        return Response(status_code=499)
    return JSONBytesResponse(_answer(engine, results[0], body))


async def generate_stream(request: Request) -> Response:
    state = request.app.state
    deadline = StreamDeadline(state.settings.request_timeout_s, state.shutdown)
    body = await read_message(request, GenerateRequest)
    engine, stream = _start(request, body)
    return_ids = body.wants_token_ids
    chunks = stream.chunks()
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        raise InternalError("the generation ended before its first event") from None
    except BaseException:
        stream.cancel()
        raise

    # a piece of text is the same JSON every time but for the text: build that part once
    head = _answer(engine, GenerationEvent("", []), body)
    head.pop("token_ids", None)
    del head["text_output"]
    piece_prefix = b"data: " + orjson.dumps(head)[:-1] + b',"text_output":'

    def encode(events: list[GenerationEvent]) -> bytes:
        out = []
        for event in events:
            if event.finish_reason is None and not return_ids:
                out.append(piece_prefix + orjson.dumps(event.text) + b"}\n\n")
            else:
                out.append(sse_event(_answer(engine, event, body)))
        return b"".join(out)

    async def events() -> AsyncIterator[bytes]:
        deadline.start(stream.cancel)
        try:
            yield encode(first)
            async for ready in chunks:
                yield encode(ready)
            if deadline.expired:
                yield sse_event({"error": deadline.message}, event="error")
        except ServerError as exc:
            yield sse_event({"error": exc.message}, event="error")
        finally:
            deadline.close()
            stream.cancel()
            await chunks.aclose()

    return EventStreamResponse(events(), on_disconnect=stream.cancel)


generate_routes: list[Route] = [
    Route(f"/v2/models/{{model}}{prefix}/{name}", endpoint, methods=["POST"])
    for prefix in ("", "/versions/{version}")
    for name, endpoint in (("generate", generate), ("generate_stream", generate_stream))
]
