"""Text generation over Triton's generate extension: the request, its answer, its stream.

``client.generate(model, prompt, ...)`` posts to ``/v2/models/{model}/generate`` and returns a
:class:`Generation`; ``client.generate_stream(...)`` posts to ``.../generate_stream`` and returns
a :class:`~maas_client.GenerationStream` of :class:`GenerationChunk` (one per server-sent event,
the last one with ``finish_reason`` and the token counts; the stream classes are in
``_async/_streams.py``, and what they share is here):

>>> with client.generate_stream("tiny_gpt", "Licensed under the", max_tokens=16) as stream:
...     for chunk in stream:  # doctest: +SKIP
...         print(chunk.text, end="", flush=True)
>>> stream.get_final().finish_reason  # doctest: +SKIP
'length'

The sampling parameters are typed keyword arguments (:class:`GenerationParameters`); anything
else the server understands goes in ``parameters``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict, cast

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from ._answers import Answer
from ._exceptions import APIResponseValidationError, InputError
from ._plans import REQUEST_ID_HEADER, RequestPlan, model_path
from ._result import Timing
from ._types import CallOptions, VersionLike

__all__ = [
    "CollectedText",
    "Collector",
    "GenerateOptions",
    "Generation",
    "GenerationChunk",
    "GenerationParameters",
    "parse_generation",
    "plan_generate",
]


class GenerationParameters(TypedDict, total=False):
    """The keyword arguments of ``generate`` and ``generate_stream`` besides the call options.
    ``None`` (or leaving one out) means the model's default.

    - ``max_tokens``: new tokens at most.
    - ``temperature``: ``0`` is greedy decoding (deterministic).
    - ``top_k``: sample among the k most likely tokens (``0``: all).
    - ``top_p``: sample within the smallest set of tokens whose probability reaches p.
    - ``seed``: makes sampling reproducible.
    - ``stop``: a string, or strings, that end the generation (not included in the text).
    - ``return_token_ids``: also return the ids of the generated tokens.
    - ``id``: the request's ``id``, echoed in the answer.
    - ``parameters``: other parameters the server understands (``{"ignore_eos": True}``).
    """

    max_tokens: int | None
    temperature: float | None
    top_k: int | None
    top_p: float | None
    seed: int | None
    stop: str | Sequence[str] | None
    return_token_ids: bool
    id: str | None
    parameters: Mapping[str, Any] | None


class GenerateOptions(GenerationParameters, CallOptions, total=False):
    """Everything ``generate`` and ``generate_stream`` take as keyword arguments."""


_SAMPLING = ("max_tokens", "temperature", "top_k", "top_p", "seed", "stop")
_PARAMETER_KEYS = GenerationParameters.__required_keys__ | GenerationParameters.__optional_keys__
_OPTION_KEYS = CallOptions.__required_keys__ | CallOptions.__optional_keys__


class GenerationChunk(BaseModel):
    """One event of a generation stream: a new piece of text.

    ``index`` counts the chunks of the stream from 0. The last chunk has ``finish_reason``
    (``"stop"``: an end-of-sequence token or a stop string; ``"length"``: ``max_tokens`` or the
    context length), the token counts, and usually no text. ``token_ids`` are there when the
    call asked for them (``return_token_ids=True``).
    """

    model_config = ConfigDict(frozen=True)

    index: int
    text: str
    token_ids: list[int] | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model_name: str
    model_version: str | None = None
    id: str | None = None


class Generation(BaseModel):
    """A whole generation: what ``generate`` returns, and ``stream.get_final()``.

    ``request_id`` is the call's ``X-Request-ID``, ``id`` the request's own ``id`` echoed (when
    one was given), ``timing`` the time the call took on the client's clock (for a stream: until
    its last event) and the attempts made.
    """

    model_config = ConfigDict(frozen=True)

    text: str
    finish_reason: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model_name: str
    model_version: str | None = None
    token_ids: list[int] | None = None
    id: str | None = None
    request_id: str | None = None
    timing: Timing


# --- the request -----------------------------------------------------------------------------


def plan_generate(
    model: str,
    version: VersionLike,
    prompt: str,
    params: GenerateOptions,
    *,
    stream: bool,
) -> tuple[RequestPlan, CallOptions]:
    """The request of a generation and the call options among ``params``.

    The sampling parameters go at the top level of the body (as Triton's generate extension
    reads them), ``parameters`` under ``"parameters"``; a key given both ways is refused.
    """
    if not isinstance(prompt, str):
        raise InputError(f"the prompt is a string, not {type(prompt).__name__}")
    unknown = [key for key in params if key not in _PARAMETER_KEYS and key not in _OPTION_KEYS]
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
    values: dict[str, Any] = dict(params)
    options = cast(CallOptions, {k: values.pop(k) for k in list(values) if k in _OPTION_KEYS})
    body: dict[str, Any] = {"text_input": prompt}
    for key in _SAMPLING:
        value = values.get(key)
        if value is not None:
            body[key] = value if key != "stop" or isinstance(value, str) else list(value)
    if values.get("return_token_ids"):
        body["return_token_ids"] = True
    if values.get("id") is not None:
        body["id"] = values["id"]
    extra = values.get("parameters")
    if extra:
        twice = sorted(set(extra) & set(body))
        if twice:
            raise InputError(
                f"parameter {twice[0]!r} is given twice: as an argument and in parameters"
            )
        body["parameters"] = dict(extra)
    headers = {"Content-Type": "application/json"}
    if stream:
        headers["Accept"] = "text/event-stream"
    plan = RequestPlan(
        "POST",
        model_path(model, version, "/generate_stream" if stream else "/generate"),
        content=orjson.dumps(body),
        headers=headers,
        model=model,
        version=None if version is None or version == "" else str(version),
    )
    return plan, options


# --- the answer ------------------------------------------------------------------------------


def parse_generation(answer: Answer) -> Generation:
    """The :class:`Generation` in a ``/generate`` answer."""
    try:
        body = orjson.loads(answer.content)
        if not isinstance(body, dict):
            raise ValueError("the answer is not a JSON object")
        return Generation.model_validate(
            {
                "text": body.get("text_output"),
                "finish_reason": body.get("finish_reason"),
                "prompt_tokens": body.get("prompt_tokens"),
                "completion_tokens": body.get("completion_tokens"),
                "model_name": body.get("model_name"),
                "model_version": body.get("model_version"),
                "token_ids": body.get("token_ids"),
                "id": body.get("id"),
                "request_id": answer.response.headers.get(REQUEST_ID_HEADER, answer.request_id),
                "timing": Timing(answer.seconds, answer.attempts),
            }
        )
    except (ValueError, ValidationError) as exc:
        raise APIResponseValidationError(
            f"the server's answer is not a generation: {exc}",
            response=answer.response,
            body=bytes(answer.content[:2000]),
            request_id=answer.request_id,
            attempts=answer.attempts,
        ) from None


class Collector:
    """Turns event data into chunks, and keeps what the whole generation needs."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.count = 0
        self.token_ids: list[int] | None = None
        self.last: GenerationChunk | None = None
        self.finished_at: float | None = None

    def add(self, data: Any) -> GenerationChunk:
        if not isinstance(data, dict):
            raise ValueError("the event's data is not a JSON object")
        chunk = GenerationChunk.model_validate(
            {
                "index": self.count,
                "text": data.get("text_output"),
                "token_ids": data.get("token_ids"),
                "finish_reason": data.get("finish_reason"),
                "prompt_tokens": data.get("prompt_tokens"),
                "completion_tokens": data.get("completion_tokens"),
                "model_name": data.get("model_name"),
                "model_version": data.get("model_version"),
                "id": data.get("id"),
            }
        )
        self.count += 1
        if chunk.text:
            self.pieces.append(chunk.text)
        if chunk.token_ids is not None:
            self.token_ids = (self.token_ids or []) + chunk.token_ids
        if chunk.finish_reason is not None:
            self.last = chunk
            self.finished_at = time.monotonic()
        return chunk

    def check_end(self) -> None:
        if self.last is None:
            raise ValueError("the stream ended before its last event (the one with finish_reason)")

    @property
    def text(self) -> str:
        if len(self.pieces) > 1:
            self.pieces[:] = ["".join(self.pieces)]
        return self.pieces[0] if self.pieces else ""

    def final(self, request_id: str, started: float, attempts: int) -> Generation:
        last = self.last
        if last is None or self.finished_at is None:
            raise RuntimeError("the stream was closed before its last event")
        return Generation(
            text=self.text,
            finish_reason=last.finish_reason,
            prompt_tokens=last.prompt_tokens,
            completion_tokens=last.completion_tokens,
            model_name=last.model_name,
            model_version=last.model_version,
            token_ids=self.token_ids,
            id=last.id,
            request_id=request_id,
            timing=Timing(self.finished_at - started, attempts),
        )


class CollectedText:
    """``text`` and ``finish_reason`` of a generation stream, read from its collector."""

    _collector: Collector

    @property
    def text(self) -> str:
        """The text received so far."""
        return self._collector.text

    @property
    def finish_reason(self) -> str | None:
        """Why the generation ended (``None`` until the last chunk arrived)."""
        last = self._collector.last
        return None if last is None else last.finish_reason
