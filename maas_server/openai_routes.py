"""OpenAI's wire format over the same text-generation models, so that the ``openai`` package
pointed at ``http://host:port/v1`` works unchanged: ``GET /v1/models[/{model}]``,
``POST /v1/completions`` and ``POST /v1/chat/completions``, streaming (server-sent events ending
with ``data: [DONE]``) and not.

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

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .auth import model_allowed, require_model_access
from .errors import BadRequestError, InternalError, ModelNotFoundError, ServerError
from .generate_routes import collect_until_disconnect, json_object, service
from .generation import GenerationEngine, GenerationParams
from .generation_stream import GenerationEvent, GenerationResult, GenerationStream, merge_chunks
from .routes import JSONBytesResponse
from .sse import EventStreamResponse, sse_event

__all__ = ["openai_routes"]

MAX_CHOICES = 16
_DONE = b"data: [DONE]\n\n"
_ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    413: "invalid_request_error",
    503: "service_unavailable",
}
_UNSUPPORTED = (
    "echo",
    "suffix",
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "tools",
    "functions",
)

Endpoint = Callable[[Request], Awaitable[Response]]


def _error_body(exc: ServerError) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(exc.status_code, "server_error")
    return {"error": {"message": exc.message, "type": kind, "param": None, "code": None}}


def _openai_errors(endpoint: Endpoint) -> Endpoint:
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


async def list_models(request: Request) -> Response:
    names = [n for n in service(request).model_names() if model_allowed(request, n)]
    return JSONBytesResponse({"object": "list", "data": [_model_entry(n) for n in names]})


async def retrieve_model(request: Request) -> Response:
    name = request.path_params["model"]
    if name not in service(request).model_names():
        raise ModelNotFoundError(f"no text-generation model {name!r} is loaded")
    return JSONBytesResponse(_model_entry(name))


# --- request parsing ------------------------------------------------------------------------


def _engine(request: Request, body: Mapping[str, Any]) -> GenerationEngine:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequestError("the request needs 'model', the name of a model")
    require_model_access(request, model)  # the model is in the body, out of the middleware's view
    return service(request).engine(model, None)


def _check_supported(body: Mapping[str, Any]) -> None:
    # null, false, 0, "" and empty collections all mean "not asked for"
    asked = [key for key in _UNSUPPORTED if body.get(key)]
    if body.get("best_of") not in (None, 1):
        asked.append("best_of")
    if asked:
        raise BadRequestError(f"{asked[0]!r} is not supported by this server")
    response_format = body.get("response_format")
    if response_format is not None and (
        not isinstance(response_format, dict) or response_format.get("type") != "text"
    ):
        raise BadRequestError("only 'response_format' {'type': 'text'} is supported")


def _choices(body: Mapping[str, Any]) -> int:
    n = body.get("n")
    if n is None:
        return 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CHOICES:
        raise BadRequestError(f"'n' must be an integer in 1..{MAX_CHOICES}")
    return n


def _params(engine: GenerationEngine, body: Mapping[str, Any], max_tokens: Any) -> GenerationParams:
    values = {
        "max_tokens": max_tokens,
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "top_k": body.get("top_k"),
        "seed": body.get("seed"),
        "stop": body.get("stop"),
        "ignore_eos": body.get("ignore_eos", False),
    }
    return engine.params(values)


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


def _prompts(engine: GenerationEngine, prompt: Any) -> list[list[int]]:
    """The token ids of each prompt of a completions request."""
    if isinstance(prompt, str):
        return [engine.encode(prompt)]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return [engine.encode(p) for p in prompt]
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return [list(prompt)]
        if all(
            isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
            for p in prompt
        ):
            return [list(p) for p in prompt]
    raise BadRequestError(
        "'prompt' must be a string, a list of strings, a list of token ids or a list of such lists"
    )


def _chat_prompt(engine: GenerationEngine, messages: Any) -> list[int]:
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("'messages' must be a non-empty list")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequestError("each message needs a 'role' string and a 'content'")
    text = engine.tokenizer.apply_chat_template(messages)
    return engine.encode(text, add_special_tokens=False)


def _stream_options(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise BadRequestError("'stream_options' must be an object")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise BadRequestError("'stream_options.include_usage' must be true or false")
    return include


def _streaming(body: Mapping[str, Any]) -> bool:
    stream = body.get("stream", False)
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise BadRequestError("'stream' must be true or false")
    return stream


def _submit(
    engine: GenerationEngine, prompts: list[list[int]], n: int, params: GenerationParams
) -> list[GenerationStream]:
    checked = [engine.check_prompt(p) for p in prompts]  # every 400 before anything starts
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
    return await _event_stream(streams, n, head, delta, include_usage)


async def _event_stream(
    streams: list[GenerationStream],
    n: int,
    head: dict[str, Any],
    delta: Callable[[int, GenerationEvent | None], dict[str, Any]],
    include_usage: bool,
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
            if include_usage:
                yield chunk([], usage=_usage(streams, n, completion_tokens))
            yield _DONE
        except ServerError as exc:
            yield sse_event(_error_body(exc))
        finally:
            cancel()
            await merged.aclose()

    return EventStreamResponse(events(), on_disconnect=cancel)


async def completions(request: Request) -> Response:
    body = await json_object(request)
    engine = _engine(request, body)
    _check_supported(body)
    n = _choices(body)
    params = _params(engine, body, body.get("max_tokens"))
    prompts = _prompts(engine, body.get("prompt"))
    stream, include_usage = _streaming(body), _stream_options(body)
    streams = _submit(engine, prompts, n, params)

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
    )


async def chat_completions(request: Request) -> Response:
    body = await json_object(request)
    engine = _engine(request, body)
    _check_supported(body)
    n = _choices(body)
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    params = _params(engine, body, max_tokens)
    prompt = _chat_prompt(engine, body.get("messages"))
    stream, include_usage = _streaming(body), _stream_options(body)
    streams = _submit(engine, [prompt], n, params)

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
    )


openai_routes: list[Route] = [
    Route("/v1/models", _openai_errors(list_models), methods=["GET"]),
    Route("/v1/models/{model}", _openai_errors(retrieve_model), methods=["GET"]),
    Route("/v1/completions", _openai_errors(completions), methods=["POST"]),
    Route("/v1/chat/completions", _openai_errors(chat_completions), methods=["POST"]),
]
