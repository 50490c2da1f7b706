"""HTTP endpoints of the Open Inference Protocol: parse the request, call the data plane, answer.

Binary framing is chosen by the ``Inference-Header-Content-Length`` header alone, never by the
Content-Type (clients differ in what they send).
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from maas_wire.codec import HEADER_LENGTH, CodecError
from maas_wire.protocol import decode_request_header, decode_request_tensors, encode_response

from .auth import model_allowed
from .batching import ClientDisconnected
from .dataplane import DataPlane
from .errors import BadRequestError
from .limits import check_tensor_limits
from .openapi import openapi_endpoint
from .publish_routes import load_with_files
from .request_body import holding_body, read_body, read_json, require_body
from .stats import model_statistics

__all__ = ["OFFLOAD_BYTES", "JSONBytesResponse", "routes"]

OFFLOAD_BYTES = 1024 * 1024
"""Request bodies of this size or more are decoded on a worker thread, off the event loop."""


class JSONBytesResponse(Response):
    """A JSON answer serialized with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _dataplane(request: Request) -> DataPlane:
    plane: DataPlane = request.app.state.dataplane
    return plane


def _version(request: Request) -> str | None:
    version: str | None = request.path_params.get("version")
    return version


async def server_metadata(request: Request) -> Response:
    return JSONBytesResponse(_dataplane(request).server_metadata())


async def health_live(request: Request) -> Response:
    return JSONBytesResponse({"live": True})


async def health_ready(request: Request) -> Response:
    ready = _dataplane(request).ready()
    return JSONBytesResponse({"ready": ready}, status_code=200 if ready else 503)


async def model_metadata(request: Request) -> Response:
    plane = _dataplane(request)
    return JSONBytesResponse(plane.model_metadata(request.path_params["model"], _version(request)))


async def model_ready(request: Request) -> Response:
    name = request.path_params["model"]
    ready = _dataplane(request).model_ready(name, _version(request))
    return JSONBytesResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)


async def model_config(request: Request) -> Response:
    plane = _dataplane(request)
    return JSONBytesResponse(plane.model_config(request.path_params["model"], _version(request)))


async def infer(request: Request) -> Response:
    """Inference: the body is checked as far as its JSON header allows (inputs, datatypes,
    shapes, sizes; the server's in-flight limit) before any tensor is decoded, held within the
    server's budget of body bytes, and decoded off the event loop when it is large."""
    plane = _dataplane(request)
    name = request.path_params["model"]
    version = _version(request)
    header_length = _header_length(request.headers.get(HEADER_LENGTH))
    settings = plane.settings
    with holding_body(request) as hold:
        body = require_body(await read_body(request, settings.max_body_bytes, hold))
        if header_length is not None and header_length > len(body):
            raise BadRequestError(
                f"{HEADER_LENGTH} must be a non-negative integer no larger than the body "
                f"({len(body)} bytes), not {header_length}"
            )
        model = plane.repository.get(name, version)
        plane.check_inflight(model)
        large = len(body) >= OFFLOAD_BYTES
        try:
            if header_length == 0:
                request_msg, tensors = plane.raw_request(model, body)
            else:
                if large:
                    request_msg, binary = await asyncio.to_thread(
                        decode_request_header, body, header_length
                    )
                else:
                    request_msg, binary = decode_request_header(body, header_length)
                plane.precheck(model, request_msg)
                if large:
                    tensors = await asyncio.to_thread(decode_request_tensors, request_msg, binary)
                else:
                    tensors = decode_request_tensors(request_msg, binary)
                del binary
        except CodecError as exc:
            raise BadRequestError(str(exc)) from None
        del body
        check_tensor_limits(tensors, settings.max_tensor_elements, settings.max_bytes_element_size)
        try:
            result = await plane.infer(
                name, version, request_msg, tensors, partial(_disconnected, request)
            )
        except ClientDisconnected:
            # The client went away while its request waited: it left the queue; nobody reads this.
            return Response(status_code=499)
        del tensors
    try:
        encoded = encode_response(
            result.model_name, result.model_version, result.outputs, request_id=result.request_id
        )
    except CodecError as exc:
        raise BadRequestError(str(exc)) from None
    if encoded.header_length is None:
        return Response(bytes(encoded.content), media_type="application/json")
    return Response(
        memoryview(encoded.content),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(encoded.header_length)},
    )


def _header_length(header: str | None) -> int | None:
    """``Inference-Header-Content-Length``: ASCII digits only (``str.isdigit`` also takes
    Unicode digits such as ``²``), and no more of them than a body size can need."""
    if header is None:
        return None
    text = header.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        shown = repr(header) if len(header) <= 40 else repr(header[:40]) + "..."
        raise BadRequestError(f"{HEADER_LENGTH} must be a non-negative integer, not {shown}")
    return int(text)


async def _disconnected(request: Request) -> None:
    """Return once the client has disconnected (the request body is already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def repository_index(request: Request) -> Response:
    body = await read_json(request, required=False)
    ready = body.get("ready", False)
    if not isinstance(ready, bool):
        raise BadRequestError("'ready' must be true or false")
    rows = _dataplane(request).repository_index(ready)
    return JSONBytesResponse([row for row in rows if model_allowed(request, row["name"])])


async def repository_load(request: Request) -> Response:
    body = await read_json(request, required=False)
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequestError("'parameters' must be a JSON object")
    override = parameters.get("config")
    if override is not None and not isinstance(override, str):
        raise BadRequestError("parameters.config must be a string holding the configuration JSON")
    files = {k: v for k, v in parameters.items() if k.startswith("file:")}
    if files:
        await load_with_files(request, override, files)
        return JSONBytesResponse({})
    await _dataplane(request).load_model(request.path_params["model"], override)
    return JSONBytesResponse({})


async def repository_unload(request: Request) -> Response:
    await read_json(request, required=False)
    await _dataplane(request).unload_model(request.path_params["model"])
    return JSONBytesResponse({})


async def model_statistics_endpoint(request: Request) -> Response:
    """Triton's statistics extension: every loaded model, one model's versions, or one version."""
    name: str | None = request.path_params.get("model")
    # off the event loop: with several workers, it waits for the others' statistics
    source = getattr(request.app.state, "stats_source", None) or _dataplane(request).repository
    stats = await asyncio.to_thread(model_statistics, source, name, _version(request))
    if name is None:
        stats = [entry for entry in stats if model_allowed(request, entry["name"])]
    return JSONBytesResponse({"model_stats": stats})


def _model_routes(suffix: str, endpoint: Any, methods: list[str]) -> list[Route]:
    return [
        Route(f"/v2/models/{{model}}{suffix}", endpoint, methods=methods),
        Route(f"/v2/models/{{model}}/versions/{{version}}{suffix}", endpoint, methods=methods),
    ]


routes: list[Route] = [
    # Inference first: Starlette tries routes in order, and this is the hot path.
    *_model_routes("/infer", infer, ["POST"]),
    Route("/v2", server_metadata, methods=["GET"]),
    Route("/v2/health/live", health_live, methods=["GET"]),
    Route("/v2/health/ready", health_ready, methods=["GET"]),
    Route("/v2/openapi.json", openapi_endpoint, methods=["GET"]),
    Route("/v2/models/stats", model_statistics_endpoint, methods=["GET"]),
    *_model_routes("/stats", model_statistics_endpoint, ["GET"]),
    *_model_routes("", model_metadata, ["GET"]),
    *_model_routes("/ready", model_ready, ["GET"]),
    *_model_routes("/config", model_config, ["GET"]),
    Route("/v2/repository/index", repository_index, methods=["POST"]),
    Route("/v2/repository/models/{model}/load", repository_load, methods=["POST"]),
    Route("/v2/repository/models/{model}/unload", repository_unload, methods=["POST"]),
]
