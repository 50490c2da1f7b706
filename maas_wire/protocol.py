"""Inference messages <-> HTTP bodies, in JSON or with Triton's binary tensor framing.

The four functions pair up: :func:`encode_request` (client) with :func:`decode_request` (server),
and :func:`encode_response` (server) with :func:`decode_response` (client). Tensors are wire
arrays (see :mod:`maas_wire.codec`); messages are the pydantic models of
:mod:`maas_wire.types`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError

from .codec import (
    CodecError,
    assemble_body,
    binary_piece,
    decode_binary_tensor,
    decode_json_tensor,
    encode_json_data,
    piece_nbytes,
    split_body,
)
from .types import InferenceRequest, InferenceResponse

__all__ = [
    "BinaryPiece",
    "Body",
    "TensorPayload",
    "decode_request",
    "decode_request_header",
    "decode_request_tensors",
    "decode_response",
    "encode_request",
    "encode_request_parts",
    "encode_response",
    "format_validation_error",
]

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True)
class TensorPayload:
    """One tensor to put in a message: its wire array, datatype and whether it goes binary."""

    name: str
    array: np.ndarray[Any, Any]
    datatype: str
    binary: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Body:
    """An encoded message: the bytes, and the JSON header's length when binary parts follow."""

    content: bytes | bytearray
    header_length: int | None = None


def format_validation_error(exc: ValidationError) -> str:
    """A one-line account of what is wrong in a message, naming each field's location."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(body)'}: {err['msg']}" for err in exc.errors()
    )


BinaryPiece = np.ndarray[Any, Any] | bytes
"""One binary tensor's contents: a fixed-size wire array, or serialized BYTES elements."""


def _encode(header: dict[str, Any], key: str, tensors: Sequence[TensorPayload]) -> Body:
    text, pieces = _encode_parts(header, key, tensors)
    if not pieces:
        return Body(text)
    return Body(assemble_body(text, pieces), len(text))


def _encode_parts(
    header: dict[str, Any], key: str, tensors: Sequence[TensorPayload]
) -> tuple[bytes, list[BinaryPiece]]:
    entries: list[dict[str, Any]] = []
    pieces: list[BinaryPiece] = []
    for tensor in tensors:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.array.shape),
        }
        parameters = dict(tensor.parameters)
        if tensor.binary:
            piece = binary_piece(tensor.array, tensor.datatype)
            parameters["binary_data_size"] = piece_nbytes(piece)
            pieces.append(piece)
        if parameters:
            entry["parameters"] = parameters
        if not tensor.binary:
            try:
                entry["data"] = encode_json_data(tensor.array, tensor.datatype)
            except CodecError as exc:
                raise CodecError(f"tensor {tensor.name!r}: {exc}") from None
        entries.append(entry)
    header[key] = entries
    return orjson.dumps(header, option=_JSON_OPTIONS), pieces


def _request_header(
    outputs: Sequence[dict[str, Any]] | None,
    request_id: str | None,
    parameters: dict[str, Any] | None,
) -> dict[str, Any]:
    header: dict[str, Any] = {}
    if request_id is not None:
        header["id"] = request_id
    if parameters:
        header["parameters"] = parameters
    if outputs is not None:
        header["outputs"] = list(outputs)
    return header


def encode_request(
    inputs: Sequence[TensorPayload],
    *,
    outputs: Sequence[dict[str, Any]] | None = None,
    request_id: str | None = None,
    parameters: dict[str, Any] | None = None,
) -> Body:
    """The body of an inference request."""
    return _encode(_request_header(outputs, request_id, parameters), "inputs", inputs)


def encode_request_parts(
    inputs: Sequence[TensorPayload],
    *,
    outputs: Sequence[dict[str, Any]] | None = None,
    request_id: str | None = None,
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, list[BinaryPiece]]:
    """An inference request as its JSON header and the binary pieces that follow it, in order.

    Nothing is copied: a caller that streams the pieces (the client does) sends each tensor's
    memory as it is. :func:`encode_request` is this followed by :func:`~.codec.assemble_body`.
    """
    return _encode_parts(_request_header(outputs, request_id, parameters), "inputs", inputs)


def encode_response(
    model_name: str,
    model_version: str | None,
    outputs: Sequence[TensorPayload],
    *,
    request_id: str | None = None,
    parameters: dict[str, Any] | None = None,
) -> Body:
    """The body of an inference response."""
    header: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        header["model_version"] = model_version
    if request_id is not None:
        header["id"] = request_id
    if parameters:
        header["parameters"] = parameters
    return _encode(header, "outputs", outputs)


def _load_header(
    body: bytes | bytearray | memoryview, header_length: int | None
) -> tuple[Any, memoryview]:
    if header_length is None:
        text: bytes | bytearray | memoryview = body
        binary = memoryview(b"")
    else:
        text, binary = split_body(body, header_length)
    try:
        return orjson.loads(text), binary
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"the JSON part of the body is not valid JSON: {exc}") from None


def _decode_tensors(
    kind: str, entries: Sequence[Any], binary: memoryview
) -> dict[str, np.ndarray[Any, Any]]:
    tensors: dict[str, np.ndarray[Any, Any]] = {}
    offset = 0
    for entry in entries:
        name = entry.name
        if name in tensors:
            raise CodecError(f"{kind} {name!r} appears more than once")
        size = (entry.parameters or {}).get("binary_data_size")
        try:
            if size is not None:
                if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                    raise CodecError(
                        f"binary_data_size must be a non-negative integer, not {size!r}"
                    )
                if entry.data is not None:
                    raise CodecError("has both 'data' and 'binary_data_size'")
                if offset + size > len(binary):
                    raise CodecError(
                        f"binary_data_size is {size} but only {len(binary) - offset} bytes of "
                        "binary data remain in the body"
                    )
                tensors[name] = decode_binary_tensor(
                    binary[offset : offset + size], entry.datatype, entry.shape
                )
                offset += size
            else:
                tensors[name] = decode_json_tensor(entry.data, entry.datatype, entry.shape)
        except CodecError as exc:
            raise CodecError(f"{kind} {name!r}: {exc}") from None
    if offset != len(binary):
        raise CodecError(
            f"the body holds {len(binary) - offset} bytes of binary data beyond what the "
            f"{kind}s declare in binary_data_size"
        )
    return tensors


def decode_request_header(
    body: bytes | bytearray | memoryview, header_length: int | None = None
) -> tuple[InferenceRequest, memoryview]:
    """The message of an inference request body, and its binary part (a view, not a copy)
    for :func:`decode_request_tensors`: whatever can be checked from the message can be,
    before any tensor is decoded."""
    obj, binary = _load_header(body, header_length)
    try:
        request = InferenceRequest.model_validate(obj)
    except ValidationError as exc:
        raise CodecError(f"malformed inference request: {format_validation_error(exc)}") from None
    return request, binary


def decode_request_tensors(
    request: InferenceRequest, binary: memoryview
) -> dict[str, np.ndarray[Any, Any]]:
    """The input wire arrays of a request from :func:`decode_request_header` (fixed-size binary
    tensors are views of the body: nothing is copied)."""
    return _decode_tensors("input", request.inputs, binary)


def decode_request(
    body: bytes | bytearray | memoryview, header_length: int | None = None
) -> tuple[InferenceRequest, dict[str, np.ndarray[Any, Any]]]:
    """Parse an inference request body into its message and its input wire arrays."""
    request, binary = decode_request_header(body, header_length)
    return request, decode_request_tensors(request, binary)


def decode_response(
    body: bytes | bytearray | memoryview, header_length: int | None = None
) -> tuple[InferenceResponse, dict[str, np.ndarray[Any, Any]]]:
    """Parse an inference response body into its message and its output wire arrays."""
    obj, binary = _load_header(body, header_length)
    try:
        response = InferenceResponse.model_validate(obj)
    except ValidationError as exc:
        raise CodecError(f"malformed inference response: {format_validation_error(exc)}") from None
    return response, _decode_tensors("output", response.outputs, binary)
