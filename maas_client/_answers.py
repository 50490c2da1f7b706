"""Reading answers: :class:`Answer` (a response that passed the status check, its body read)
and a pure parser for each kind of answer, inference results included."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import orjson
from pydantic import BaseModel, ValidationError

from maas_wire.codec import HEADER_LENGTH, CodecError, from_wire
from maas_wire.protocol import decode_response, encode_request_parts

from ._body import SMALL_BODY, BodyStream
from ._exceptions import APIResponseValidationError, InputError
from ._inputs import Output, collect_inputs, prepare_inputs, request_outputs
from ._plans import JSON_HEADERS, REQUEST_ID_HEADER, RequestPlan, model_path, version_text
from ._result import InferResult, RepositoryIndex, Timing
from ._status import error_body, make_status_error
from ._types import VersionLike
from .types import (
    InferenceStatistics,
    ModelConfiguration,
    ModelMetadata,
    RepositoryModel,
    ServerMetadata,
)

__all__ = [
    "NO_METADATA_STATUSES",
    "Answer",
    "InferCall",
    "binary_supported",
    "infer_call",
    "parse_flag",
    "parse_json_object",
    "parse_model",
    "parse_model_config",
    "parse_model_metadata",
    "parse_models",
    "parse_nothing",
    "parse_server_metadata",
    "parse_statistics",
]

_M = TypeVar("_M", bound=BaseModel)

NO_METADATA_STATUSES = frozenset({404, 405, 501})
"""Answers to ``GET /v2`` that mean the server has no metadata endpoint (then: JSON tensors)."""


@dataclass(slots=True)
class Answer:
    """A response that passed the status check, with its body read."""

    response: httpx.Response
    content: bytes | bytearray
    request_id: str
    attempts: int
    seconds: float


def binary_supported(metadata: ServerMetadata) -> bool:
    return "binary_tensor_data" in metadata.extensions


# --- parsers -------------------------------------------------------------------------


def _json(answer: Answer) -> Any:
    if not answer.content:
        return None
    try:
        return orjson.loads(answer.content)
    except orjson.JSONDecodeError as exc:
        raise APIResponseValidationError(
            f"the server's answer is not JSON: {exc}",
            response=answer.response,
            body=bytes(answer.content[:2000]),
            request_id=answer.request_id,
            attempts=answer.attempts,
        ) from None


def parse_model(cls: type[_M]) -> Callable[[Answer], _M]:
    """A parser of answers holding one ``cls`` object."""

    def parse(answer: Answer) -> _M:
        body = _json(answer)
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            raise APIResponseValidationError(
                f"the server's answer is not a valid {cls.__name__}: {exc}",
                response=answer.response,
                body=body,
                request_id=answer.request_id,
                attempts=answer.attempts,
            ) from None

    return parse


def parse_models(answer: Answer) -> RepositoryIndex:
    body = _json(answer)
    if not isinstance(body, list):
        raise APIResponseValidationError(
            "the repository index is not a JSON list",
            response=answer.response,
            body=body,
            request_id=answer.request_id,
            attempts=answer.attempts,
        )
    try:
        return RepositoryIndex(RepositoryModel.model_validate(row) for row in body)
    except ValidationError as exc:
        raise APIResponseValidationError(
            f"the repository index holds an invalid row: {exc}",
            response=answer.response,
            body=body,
            request_id=answer.request_id,
            attempts=answer.attempts,
        ) from None


def parse_flag(model: str | None = None, version: str | None = None) -> Callable[[Answer], bool]:
    """A parser of health and readiness answers: 2xx is ``True``; 503, or a 400 without a
    message (MLServer's "not ready"), is ``False``; any other status raises."""

    def parse(answer: Answer) -> bool:
        status = answer.response.status_code
        if status < 300:
            return True
        if status == 503:
            return False
        _, error = error_body(answer.content)
        if status == 400 and error is None:
            return False
        raise make_status_error(
            answer.response,
            answer.content,
            request_id=answer.request_id,
            attempts=answer.attempts,
            model=model,
            version=version,
        )

    return parse


def parse_nothing(answer: Answer) -> None:
    return None


def parse_json_object(answer: Answer) -> dict[str, Any]:
    """A parser of answers holding one JSON object, returned as it is."""
    body = _json(answer)
    if not isinstance(body, dict):
        raise APIResponseValidationError(
            "the server's answer is not a JSON object",
            response=answer.response,
            body=body,
            request_id=answer.request_id,
            attempts=answer.attempts,
        )
    return body


parse_server_metadata = parse_model(ServerMetadata)
parse_model_metadata = parse_model(ModelMetadata)
parse_model_config = parse_model(ModelConfiguration)
parse_statistics = parse_model(InferenceStatistics)


@dataclass(frozen=True)
class InferCall:
    """An inference request ready to send, and how to read its answer."""

    plan: RequestPlan

    def parse(self, answer: Answer) -> InferResult:
        header = answer.response.headers.get(HEADER_LENGTH)
        try:
            header_length = int(header) if header is not None else None
            response, arrays = decode_response(answer.content, header_length)
        except (CodecError, ValueError) as exc:
            raise APIResponseValidationError(
                f"the inference response cannot be decoded: {exc}",
                response=answer.response,
                request_id=answer.request_id,
                attempts=answer.attempts,
            ) from None
        outputs = {out.name: from_wire(arrays[out.name], out.datatype) for out in response.outputs}
        request_id = answer.response.headers.get(REQUEST_ID_HEADER, answer.request_id)
        return InferResult(
            response,
            outputs,
            request_id=request_id,
            timing=Timing(answer.seconds, answer.attempts),
        )


def infer_call(
    model: str,
    version: VersionLike,
    inputs: Any,
    metadata: ModelMetadata | None,
    *,
    check: bool,
    binary: bool,
    outputs: Sequence[str | Output] | None,
    id: str | None,
    parameters: Mapping[str, Any] | None,
) -> InferCall:
    items = collect_inputs(inputs, metadata)
    checked = metadata if check else None
    payloads = prepare_inputs(items, checked, binary=binary)
    wanted = request_outputs(outputs, checked, binary=binary)
    params: dict[str, Any] = dict(parameters) if parameters else {}
    if binary and outputs is None:
        params.setdefault("binary_data_output", True)
    try:
        header, pieces = encode_request_parts(
            payloads, outputs=wanted, request_id=id, parameters=params or None
        )
    except CodecError as exc:
        raise InputError(str(exc)) from None
    content: bytes | BodyStream
    headers: Mapping[str, str]
    if pieces:
        stream = BodyStream(header, pieces)
        content = b"".join(stream.chunks) if stream.length <= SMALL_BODY else stream
        headers = {
            "Content-Type": "application/octet-stream",
            HEADER_LENGTH: str(len(header)),
        }
    else:
        content = header
        headers = JSON_HEADERS
    plan = RequestPlan(
        "POST",
        model_path(model, version, "/infer"),
        content=content,
        headers=headers,
        stream_response=True,
        model=model,
        version=version_text(version),
    )
    return InferCall(plan)
