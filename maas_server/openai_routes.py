"""OpenAI's wire format over the same text-generation models, so that the ``openai`` package
pointed at ``http://host:port/v1`` works unchanged: ``GET /v1/models[/{model}]``,
``POST /v1/completions`` and ``POST /v1/chat/completions``, streaming (server-sent events ending
with ``data: [DONE]``) and not; and ``POST /v1/embeddings`` over embedding models
(``"task": "embedding"``): ``input`` as a string, a list of strings, a list of token ids or a
list of such lists, ``encoding_format`` ``float`` or ``base64``, ``dimensions`` where the model's
configuration sets ``pipeline.outputs.matryoshka``. ``/v1/models`` lists both kinds.

``model`` names a repository model (its newest ready version). Supported: ``prompt`` (a string,
a list of strings, a list of token ids or a list of such lists), ``messages`` (rendered with the
chat template of the model's ``tokenizer_config.json``, or a plain ``role: content`` template),
``max_tokens`` / ``max_completion_tokens``, ``temperature``, ``top_p``, ``n``, ``stop``, ``seed``,
``stream``, ``stream_options.include_usage``, and, as extra body keys, ``top_k`` and
``ignore_eos``. With ``n`` > 1 and a seed, choice ``i`` uses ``seed + i``. Options that would
change the answer and are not implemented (``logprobs``, ``echo``, ``suffix``, penalties,
``logit_bias``, tools, structured output) are refused with a 400 rather than ignored.

Errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import base64
import functools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from maas_wire.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    OpenAIRequest,
)

from .auth import model_allowed, require_model_access
from .dataplane import DataPlane
from .errors import BadRequestError, InternalError, ModelNotFoundError, ServerError
from .generate_routes import collect_until_disconnect, service
from .generation import GenerationEngine, GenerationParams
from .generation_stream import GenerationEvent, GenerationResult, GenerationStream, merge_chunks
from .request_body import read_message
from .routes import JSONBytesResponse
from .sse import EventStreamResponse, StreamDeadline, sse_event

__all__ = ["openai_routes"]

_DONE = b"data: [DONE]\n\n"
_ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    413: "invalid_request_error",
    503: "service_unavailable",
}
Endpoint = Callable[[Request], Awaitable[Response]]


def _error_body(exc: ServerError) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(exc.status_code, "server_error")
    return {"error": {"message": exc.message, "type": kind, "param": None, "code": None}}


def _deadline_error(deadline: StreamDeadline) -> dict[str, Any]:
    message, kind = deadline.message, deadline.error_type
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _stream_deadline(request: Request) -> StreamDeadline:
    state = request.app.state
    return StreamDeadline(state.settings.request_timeout_s, state.shutdown)


def _openai_errors(endpoint: Endpoint) -> Endpoint:
    @functools.wraps(endpoint)
    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ServerError as exc:
            return JSONBytesResponse(
                _error_body(exc), status_code=exc.status_code, headers=exc.headers
            )

    return wrapped


# --- models ---------------------------------------------------------------------------------


def _model_entry(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "maas"}


def _dataplane(request: Request) -> DataPlane:
    plane: DataPlane = request.app.state.dataplane
    return plane


def _openai_models(request: Request) -> list[str]:
    """The loaded text-generation and embedding models."""
    embedding = {
        m.name
        for m in _dataplane(request).repository.loaded_models()
        if m.pipeline is not None and m.pipeline.task == "embedding"
    }
    return sorted(embedding.union(service(request).model_names()))


async def list_models(request: Request) -> Response:
    names = [n for n in _openai_models(request) if model_allowed(request, n)]
    return JSONBytesResponse({"object": "list", "data": [_model_entry(n) for n in names]})


async def retrieve_model(request: Request) -> Response:
    name = request.path_params["model"]
    if name not in _openai_models(request):
        raise ModelNotFoundError(f"no text-generation or embedding model {name!r} is loaded")
    return JSONBytesResponse(_model_entry(name))


# --- request parsing ------------------------------------------------------------------------


def _engine(request: Request, body: OpenAIRequest) -> GenerationEngine:
    require_model_access(
        request, body.model
    )  # the model is in the body, out of the middleware's view
    return service(request).engine(body.model, None)


def _check_supported(body: OpenAIRequest) -> None:
    asked = body.unsupported()
    if asked == ["response_format"]:
        raise BadRequestError("only 'response_format' {'type': 'text'} is supported")
    if asked:
        raise BadRequestError(f"{asked[0]!r} is not supported by this server")


def _seeded(params: GenerationParams, offset: int) -> GenerationParams:
    seed = params.sampling.seed
    if offset == 0 or seed is None:
        return params
    sampling = type(params.sampling)(
        params.sampling.temperature,
        params.sampling.top_k,
        params.sampling.top_p,
        (seed + offset) % 2**64,
    )
    return GenerationParams(params.max_tokens, sampling, params.stop, params.ignore_eos)


def _prompts(engine: GenerationEngine, body: CompletionRequest) -> list[list[int]]:
    """The token ids of each prompt of a completions request."""
    return [engine.encode(p) if isinstance(p, str) else list(p) for p in body.prompts()]


def _chat_prompt(engine: GenerationEngine, body: ChatCompletionRequest) -> list[int]:
    messages = [m.model_dump() for m in body.messages]
    text = engine.tokenizer.apply_chat_template(messages)
    return engine.encode(text, add_special_tokens=False)


def _submit(
    engine: GenerationEngine, prompts: list[list[int]], n: int, params: GenerationParams
) -> list[GenerationStream]:
    checked = [engine.check_prompt(p) for p in prompts]  # every 400 before anything starts
    engine.check_capacity(len(checked) * n)  # all of the request's sequences, or none
    streams: list[GenerationStream] = []
    try:
        for prompt in checked:
            for offset in range(n):
                streams.append(engine.submit(prompt, _seeded(params, offset)))
    except BaseException:
        for stream in streams:
            stream.cancel()
        raise
    return streams


def _usage(streams: list[GenerationStream], n: int, completion_tokens: int) -> dict[str, int]:
    prompt_tokens = sum(s.prompt_tokens for s in streams[::n])
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


# --- answering ------------------------------------------------------------------------------


async def _answer(
    request: Request,
    engine: GenerationEngine,
    streams: list[GenerationStream],
    n: int,
    *,
    kind: str,
    choice: Callable[[int, GenerationResult], dict[str, Any]],
    delta: Callable[[int, GenerationEvent | None], dict[str, Any]] | None,
    stream: bool,
    include_usage: bool,
    deadline: StreamDeadline,
) -> Response:
    prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
    head = {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": engine.model_name,
    }
    if not stream:
        results = await collect_until_disconnect(request, streams)
        if results is None:
            return Response(status_code=499)
        completion_tokens = sum(r.completion_tokens for r in results)
        return JSONBytesResponse(
            {
                **head,
                "choices": [choice(i, r) for i, r in enumerate(results)],
                "usage": _usage(streams, n, completion_tokens),
            }
        )
    head["object"] = f"{kind}.chunk" if kind.startswith("chat") else kind
    assert delta is not None
    return await _event_stream(streams, n, head, delta, include_usage, deadline)


async def _event_stream(
    streams: list[GenerationStream],
    n: int,
    head: dict[str, Any],
    delta: Callable[[int, GenerationEvent | None], dict[str, Any]],
    include_usage: bool,
    deadline: StreamDeadline,
) -> Response:
    def cancel() -> None:
        for stream in streams:
            stream.cancel()

    merged = merge_chunks(streams)
    try:
        first = await anext(merged)
    except StopAsyncIteration:
        raise InternalError("the generation ended before its first event") from None
    except BaseException:
        cancel()
        raise

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse_event({**head, "choices": choices, **extra})

    async def events() -> AsyncIterator[bytes]:
        completion_tokens = 0
        deadline.start(cancel)
        try:
            opening = [delta(i, None) for i in range(len(streams))]
            if any(opening):
                yield chunk([c for c in opening if c])
            pending = [first]
            while True:
                for index, ready in pending:
                    out = []
                    for event in ready:
                        out.append(chunk([delta(index, event)]))
                        completion_tokens += event.completion_tokens
                    yield b"".join(out)
                try:
                    pending = [await anext(merged)]
                except StopAsyncIteration:
                    break
            if deadline.expired:
                yield sse_event(_deadline_error(deadline))
                return
            if include_usage:
                yield chunk([], usage=_usage(streams, n, completion_tokens))
            yield _DONE
        except ServerError as exc:
            yield sse_event(_error_body(exc))
        finally:
            deadline.close()
            cancel()
            await merged.aclose()

    return EventStreamResponse(events(), on_disconnect=cancel)


async def completions(request: Request) -> Response:
    deadline = _stream_deadline(request)
    body = await read_message(request, CompletionRequest)
    engine = _engine(request, body)
    _check_supported(body)
    n = body.choices
    engine.check_capacity(body.prompt_count * n)  # before any prompt is tokenized
    params = engine.params(body.sampling(body.max_tokens))
    streams = _submit(engine, _prompts(engine, body), n, params)
    stream, include_usage = body.streaming, body.include_usage

    def choice(index: int, result: GenerationResult) -> dict[str, Any]:
        return {
            "index": index,
            "text": result.text,
            "logprobs": None,
            "finish_reason": result.finish_reason,
        }

    def delta(index: int, event: GenerationEvent | None) -> dict[str, Any]:
        if event is None:
            return {}
        return {
            "index": index,
            "text": event.text,
            "logprobs": None,
            "finish_reason": event.finish_reason,
        }

    return await _answer(
        request,
        engine,
        streams,
        n,
        kind="text_completion",
        choice=choice,
        delta=delta,
        stream=stream,
        include_usage=include_usage,
        deadline=deadline,
    )


async def chat_completions(request: Request) -> Response:
    deadline = _stream_deadline(request)
    body = await read_message(request, ChatCompletionRequest)
    engine = _engine(request, body)
    _check_supported(body)
    n = body.choices
    engine.check_capacity(n)  # before the messages are rendered and tokenized
    params = engine.params(body.sampling(body.token_limit))
    streams = _submit(engine, [_chat_prompt(engine, body)], n, params)
    stream, include_usage = body.streaming, body.include_usage

    def choice(index: int, result: GenerationResult) -> dict[str, Any]:
        return {
            "index": index,
            "message": {"role": "assistant", "content": result.text},
            "logprobs": None,
            "finish_reason": result.finish_reason,
        }

    def delta(index: int, event: GenerationEvent | None) -> dict[str, Any]:
        if event is None:
            content: dict[str, Any] = {"role": "assistant", "content": ""}
        elif event.finish_reason is not None and not event.text:
            content = {}
        else:
            content = {"content": event.text}
        return {
            "index": index,
            "delta": content,
            "logprobs": None,
            "finish_reason": event.finish_reason if event else None,
        }

    return await _answer(
        request,
        engine,
        streams,
        n,
        kind="chat.completion",
        choice=choice,
        delta=delta,
        stream=stream,
        include_usage=include_usage,
        deadline=deadline,
    )


async def embeddings(request: Request) -> Response:
    body = await read_message(request, EmbeddingRequest)
    require_model_access(request, body.model)  # the model is in the body
    result = await _dataplane(request).embed(body.model, body.inputs(), body.dimensions)
    vectors = result.vectors
    if body.encoding_format == "base64":
        little = vectors.astype("<f4", copy=False)
        encoded: list[Any] = [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
    else:
        encoded = vectors.tolist()
    return JSONBytesResponse(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)
            ],
            "model": body.model,
            "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
        }
    )


openai_routes: list[Route] = [
    Route("/v1/models", _openai_errors(list_models), methods=["GET"]),
    Route("/v1/models/{model}", _openai_errors(retrieve_model), methods=["GET"]),
    Route("/v1/completions", _openai_errors(completions), methods=["POST"]),
    Route("/v1/chat/completions", _openai_errors(chat_completions), methods=["POST"]),
    Route("/v1/embeddings", _openai_errors(embeddings), methods=["POST"]),
]
