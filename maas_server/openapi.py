"""The OpenAPI 3 document of the server, built from its route table and the wire models.

Every route of the app appears (a test keeps the two equal); endpoints known here get their
request and answer schemas from :mod:`maas_wire.types`, any other route (added later) gets a
summary from its endpoint's docstring. Served at ``GET /v2/openapi.json``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from maas_wire.datasets import DatasetInfo, DatasetList, DatasetPreview
from maas_wire.generate import GenerateRequest, GenerateResponse
from maas_wire.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from maas_wire.types import (
    ErrorResponse,
    InferenceRequest,
    InferenceResponse,
    ModelConfiguration,
    ModelMetadata,
    RepositoryIndexRequest,
    RepositoryModel,
    RepositoryModelLoadRequest,
    ServerMetadata,
)

from . import __version__
from .settings import Settings

__all__ = ["build_openapi", "openapi_endpoint", "route_operations"]

_REF = "#/components/schemas/{model}"
_PARAM = re.compile(r"\{([^}:]+)(?::[^}]+)?\}")


@dataclass(frozen=True)
class _Operation:
    summary: str
    tag: str
    request: type[BaseModel] | None = None
    answer: type[BaseModel] | dict[str, Any] | None = None
    binary: bool = False
    body_required: bool = False  # an empty body is a 400 (else it reads as {})
    events: bool = False  # the answer may be server-sent events (text/event-stream)
    files: tuple[str, ...] = ()  # the body (request) or answer (GET) is a file of these types


_DURATION = {
    "type": "object",
    "properties": {"count": {"type": "integer"}, "ns": {"type": "integer"}},
}
_STATS = {
    "type": "object",
    "properties": {
        "model_stats": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "version": {"type": "string"},
                    "last_inference": {"type": "integer"},
                    "inference_count": {"type": "integer"},
                    "execution_count": {"type": "integer"},
                    "inference_stats": {"type": "object", "additionalProperties": _DURATION},
                    "batch_stats": {"type": "array", "items": {"type": "object"}},
                },
            },
        }
    },
}
_READY = {"type": "object", "properties": {"ready": {"type": "boolean"}}}
_DATASET_TYPES = (
    "text/csv",
    "application/vnd.apache.parquet",
    "application/x-ndjson",
    "application/x-npy",
    "application/x-npz",
)

_OPERATIONS: dict[str, _Operation] = {
    "server_metadata": _Operation("Server metadata and protocol extensions", "server", None,
                                  ServerMetadata),
    "health_live": _Operation("Whether the server is live", "health", None, _READY),
    "health_ready": _Operation("Whether the server is ready (503 when not)", "health", None,
                               _READY),
    "model_metadata": _Operation("Model metadata: inputs, outputs, versions", "models", None,
                                 ModelMetadata),
    "model_ready": _Operation("Whether the model is ready (503 when not)", "models", None,
                              _READY),
    "model_config": _Operation("The model's configuration (Triton's model_config)", "models",
                               None, ModelConfiguration),
    "infer": _Operation("Inference (JSON, or binary tensor data with "
                        "Inference-Header-Content-Length)", "inference", InferenceRequest,
                        InferenceResponse, binary=True, body_required=True),
    "generate": _Operation("Generate text (Triton's generate extension), one JSON answer",
                           "generation", GenerateRequest, GenerateResponse, body_required=True),
    "generate_stream": _Operation("Generate text as server-sent events, one GenerateResponse "
                                  "per piece of text", "generation", GenerateRequest,
                                  GenerateResponse, body_required=True, events=True),
    "list_models": _Operation("OpenAI: the text-generation and embedding models", "openai",
                              None, {"type": "object"}),
    "retrieve_model": _Operation("OpenAI: one text-generation or embedding model", "openai",
                                 None, {"type": "object"}),
    "embeddings": _Operation("OpenAI embeddings of texts or token ids", "openai",
                             EmbeddingRequest, {"type": "object"}, body_required=True),
    "completions": _Operation("OpenAI completions (server-sent events with stream: true)",
                              "openai", CompletionRequest, {"type": "object"},
                              body_required=True, events=True),
    "chat_completions": _Operation("OpenAI chat completions (server-sent events with "
                                   "stream: true)", "openai", ChatCompletionRequest,
                                   {"type": "object"}, body_required=True, events=True),
    "model_statistics_endpoint": _Operation("Triton statistics of loaded models", "statistics",
                                            None, _STATS),
    "repository_index": _Operation("The models of the repository and their state", "repository",
                                   RepositoryIndexRequest,
                                   {"type": "array",
                                    "items": {"$ref": _REF.format(model="RepositoryModel")}}),
    "repository_load": _Operation("Load or reload a model", "repository",
                                  RepositoryModelLoadRequest, {"type": "object"}),
    "repository_unload": _Operation("Unload a model", "repository", None, {"type": "object"}),
    "metrics_endpoint": _Operation("Prometheus metrics (text format)", "observability"),
    "openapi_endpoint": _Operation("This OpenAPI document", "server", None, {"type": "object"}),
    "upload_dataset": _Operation("Store the streamed body (CSV, Parquet, JSON Lines, NPY or NPZ) "
                                 "as the next version of a dataset", "datasets", None,
                                 DatasetInfo, files=_DATASET_TYPES),
    "list_datasets": _Operation("The newest version of each dataset", "datasets", None,
                                DatasetList),
    "show_dataset": _Operation("A dataset version, its versions and first rows", "datasets",
                               None, DatasetPreview),
    "download_dataset": _Operation("A dataset version's file, as uploaded or converted "
                                   "(?format=original|parquet|csv|npz)", "datasets",
                                   files=_DATASET_TYPES),
    "delete_dataset": _Operation("Delete a dataset version, or every version (409 while a job "
                                 "reads one)", "datasets", None, {"type": "object"}),
}  # fmt: skip

_ERRORS = {
    "400": "Malformed request, or one that does not fit the model",
    "401": "Missing or invalid API key",
    "403": "The API key lacks the scope, or may not use the model",
    "404": "No such model or version",
    "413": "Body, tensor or BYTES element over the server's limits",
    "429": "Over the API key's rate or concurrency (see Retry-After)",
    "503": "Model not ready, or the server or queue is full (see Retry-After)",
}


def route_operations(routes: Iterable[BaseRoute], prefix: str = "") -> list[tuple[str, str, Any]]:
    """``(path, method, endpoint)`` of every route (HEAD, which Starlette adds to GET, left
    out), descending into mounts."""
    found: list[tuple[str, str, Any]] = []
    for route in routes:
        if isinstance(route, Route):
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    found.append((prefix + route.path, method, route.endpoint))
        elif isinstance(route, Mount):
            found.extend(route_operations(route.routes, prefix + route.path))
    return found


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    models: list[type[BaseModel]] = [
        ChatCompletionRequest,
        CompletionRequest,
        EmbeddingRequest,
        ErrorResponse,
        GenerateRequest,
        GenerateResponse,
        InferenceRequest,
        InferenceResponse,
        ModelConfiguration,
        ModelMetadata,
        DatasetInfo,
        DatasetList,
        DatasetPreview,
        RepositoryIndexRequest,
        RepositoryModel,
        RepositoryModelLoadRequest,
        ServerMetadata,
    ]
    for model in models:
        schema = model.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def _schema(answer: type[BaseModel] | dict[str, Any]) -> dict[str, Any]:
    if isinstance(answer, dict):
        return answer
    return {"$ref": _REF.format(model=answer.__name__)}


def _operation(path: str, method: str, endpoint: Any, open_path: bool) -> dict[str, Any]:
    name = getattr(endpoint, "__name__", "endpoint")
    known = _OPERATIONS.get(name)
    if known is None:
        doc = (getattr(endpoint, "__doc__", None) or name.replace("_", " ")).strip()
        known = _Operation(doc.splitlines()[0], path.split("/")[2] if path.count("/") > 1 else "")
    plain = _PARAM.sub(r"\1", path).strip("/").replace("/", "_")
    operation: dict[str, Any] = {
        "operationId": f"{name}_{method.lower()}_{plain}",
        "summary": known.summary,
        "tags": [known.tag] if known.tag else [],
    }
    parameters = [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
        for p in _PARAM.findall(path)
    ]
    if parameters:
        operation["parameters"] = parameters
    if known.request is not None:
        content: dict[str, Any] = {"application/json": {"schema": _schema(known.request)}}
        if known.binary:
            content["application/octet-stream"] = {
                "schema": {"type": "string", "format": "binary"},
                "description": "JSON header then binary tensors; the header's length is in "
                "Inference-Header-Content-Length",
            }
        operation["requestBody"] = {"required": known.body_required, "content": content}
    elif method == "POST" and known.files:
        operation["requestBody"] = {
            "required": True,
            "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in known.files},
        }
    elif method == "POST":
        operation["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    if name == "metrics_endpoint":
        ok: dict[str, Any] = {"text/plain": {"schema": {"type": "string"}}}
    elif method == "GET" and known.files:
        ok = {t: {"schema": {"type": "string", "format": "binary"}} for t in known.files}
    else:
        ok = {"application/json": {"schema": _schema(known.answer or {"type": "object"})}}
        if known.binary:
            ok["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
        if known.events:
            ok["text/event-stream"] = {
                "schema": {"type": "string"},
                "description": "data: <JSON> events; an error after the first is a last "
                "event that carries {'error': ...}",
            }
    error = {"application/json": {"schema": _schema(ErrorResponse)}}
    operation["responses"] = {
        "200": {"description": "OK", "content": ok},
        **{code: {"description": text, "content": error} for code, text in _ERRORS.items()},
    }
    if open_path:
        operation["security"] = []
    return operation


def build_openapi(routes: Iterable[BaseRoute], settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``routes`` as this server is configured."""
    paths: dict[str, dict[str, Any]] = {}
    for path, method, endpoint in route_operations(routes):
        open_path = path in settings.open_paths
        paths.setdefault(path, {})[method.lower()] = _operation(path, method, endpoint, open_path)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "maas",
            "version": __version__,
            "description": "The Open Inference Protocol (KServe V2) with Triton's extensions.",
        },
        "paths": paths,
        "components": {"schemas": _schemas()},
    }
    if settings.auth_enabled:
        document["components"]["securitySchemes"] = {
            "apiKey": {"type": "http", "scheme": "bearer", "description": "a maas API key"}
        }
        document["security"] = [{"apiKey": []}]
    return document


async def openapi_endpoint(request: Request) -> Response:
    """This OpenAPI document."""
    state = request.app.state
    document = getattr(state, "openapi", None)
    if document is None:
        document = build_openapi(request.app.routes, state.settings)
        state.openapi = document
    return Response(orjson.dumps(document), media_type="application/json")
