"""HTTP endpoints of the model lifecycle: publish, list, delete versions and set the default.

- ``PUT /v2/repository/models/{model}/versions/{version}`` and ``POST .../versions`` (the next
  number): the body is the model, streamed: one ``.onnx`` file, or a tar (gzip or not) or zip
  of a version folder. Headers: ``X-Content-SHA256`` (checked), ``X-Maas-Metadata`` (a JSON
  object: ``framework`` and free-form provenance), ``X-Maas-Config`` (the configuration JSON,
  for a single file); query ``default=false`` publishes without making it the default. 201 with
  the version's entry.
- ``GET .../versions``: the versions with state, size, sha256, created time and provenance, the
  default, and the failed attempts.
- ``DELETE .../versions/{version}``: 409 when it is the only version serving or the last one on
  disk, and ``DELETE /v2/repository/models/{model}``: 409 while it has versions, unless
  ``?force=true``.
- ``PUT .../default`` ``{"version": "3"}``: the version unversioned requests use.

All of them need the ``admin`` scope (they are under ``/v2/repository/``); an API key's
``max_upload_bytes`` lowers the server's ``max_upload_bytes`` for its uploads.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .auth import request_key
from .errors import BadRequestError, UnsupportedMediaTypeError
from .publish import Publisher, Upload
from .request_body import read_json, upload_stream
from .worker_store import Change
from .worker_sync import WorkerSync

__all__ = ["load_with_files", "publish_routes", "publisher"]

SHA256_HEADER = "x-content-sha256"
METADATA_HEADER = "x-maas-metadata"
CONFIG_HEADER = "x-maas-config"


def _json(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


def publisher(request: Request) -> Publisher:
    """The app's publisher."""
    found: Publisher = request.app.state.publisher
    return found


def _flag(request: Request, name: str, default: bool) -> bool:
    value = request.query_params.get(name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise BadRequestError(f"query parameter {name!r} must be true or false, not {value!r}")


def _version_param(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise BadRequestError(f"invalid model version {text!r}: versions are integers")
    return int(text)


def upload_for(request: Request) -> Upload:
    """The limit, provenance and options of a publish request."""
    settings = request.app.state.settings
    key = request_key(request)
    limit: int = settings.max_upload_bytes
    if key is not None and key.max_upload_bytes is not None:
        limit = min(limit, key.max_upload_bytes)
    metadata: dict[str, Any] = {}
    raw = request.headers.get(METADATA_HEADER)
    if raw:
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequestError(f"X-Maas-Metadata is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise BadRequestError("X-Maas-Metadata must be a JSON object")
        metadata = parsed
    declared = request.headers.get("content-length")
    sha = request.headers.get(SHA256_HEADER)
    if sha is not None and not (len(sha) == 64 and all(c in "0123456789abcdefABCDEF" for c in sha)):
        raise BadRequestError("X-Content-SHA256 must be 64 hexadecimal digits")
    return Upload(
        limit=limit,
        declared=int(declared) if declared and declared.isdigit() and len(declared) < 20 else None,
        sha256=sha,
        key=key.name if key is not None else None,
        metadata=metadata,
        config=request.headers.get(CONFIG_HEADER),
        make_default=_flag(request, "default", True),
    )


async def _publish(request: Request, version: int | None) -> Response:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaTypeError(
            "send uploads without Content-Encoding (a .tar.gz archive is detected by itself)"
        )
    upload = upload_for(request)
    name = request.path_params["model"]
    entry = await publisher(request).upload(
        name, version, upload_stream(request, upload.declared), upload
    )
    return _json(entry, status_code=201)


async def publish_version(request: Request) -> Response:
    """Publish a model version (a streamed .onnx file, or a tar/zip of its folder)."""
    return await _publish(request, _version_param(request.path_params["version"]))


async def publish_next_version(request: Request) -> Response:
    """Publish a model as its next version (a streamed .onnx file, or a tar/zip)."""
    return await _publish(request, None)


async def list_versions(request: Request) -> Response:
    """The versions of a model with their state and provenance, and the failed attempts."""
    found = await asyncio.to_thread(publisher(request).describe, request.path_params["model"])
    return _json(found)


async def delete_version(request: Request) -> Response:
    """Delete a model version (409 when it is all the model serves or has, unless force=true)."""
    name = request.path_params["model"]
    version = _version_param(request.path_params["version"])
    force = _flag(request, "force", False)
    plane = publisher(request)
    await asyncio.to_thread(plane.repository.remove_version, name, version, force=force)
    return _json(await asyncio.to_thread(plane.describe, name))


async def delete_model(request: Request) -> Response:
    """Delete a model and all its versions (409 while it has versions, unless force=true)."""
    name = request.path_params["model"]
    force = _flag(request, "force", False)
    await asyncio.to_thread(publisher(request).repository.remove_model, name, force=force)
    return _json({})


async def set_default(request: Request) -> Response:
    """Make a version the one unversioned requests use (loaded first if needed)."""
    name = request.path_params["model"]
    body = await read_json(request, required=True)
    version = body.get("version")
    if isinstance(version, bool) or not isinstance(version, (str, int)):
        raise BadRequestError('the body must be {"version": "<version>"}')
    number = _version_param(str(version))
    plane = publisher(request)
    await asyncio.to_thread(plane.repository.set_default, name, number)
    return _json(await asyncio.to_thread(plane.describe, name))


async def load_with_files(request: Request, config: str | None, files: dict[str, Any]) -> None:
    """Triton's load with ``file:<version>/<path>`` parameters: write them as a version
    (replacing one of the same number), validate it, then serve it."""
    sync = _sync(request)
    since = sync.mark() if sync is not None else 0
    upload = upload_for(request)
    await publisher(request).load_files(request.path_params["model"], config, files, upload)
    if sync is not None:
        await sync.changed(Change("follow", request.path_params["model"]), since)


def _sync(request: Request) -> WorkerSync | None:
    found: WorkerSync | None = getattr(request.app.state, "sync", None)
    return found


def _synced(
    endpoint: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """``endpoint`` changes the model's folder or default version; with several workers, it
    answers once every worker serves the model as the folder and the index now say."""

    @functools.wraps(endpoint)
    async def synced(request: Request) -> Response:
        sync = _sync(request)
        if sync is None:
            return await endpoint(request)
        since = sync.mark()
        response = await endpoint(request)
        await sync.changed(Change("follow", request.path_params["model"]), since)
        return response

    return synced


_VERSIONS = "/v2/repository/models/{model}/versions"
publish_routes: list[Route] = [
    Route(_VERSIONS, _synced(publish_next_version), methods=["POST"]),
    Route(_VERSIONS, list_versions, methods=["GET"]),
    Route(_VERSIONS + "/{version}", _synced(publish_version), methods=["PUT"]),
    Route(_VERSIONS + "/{version}", _synced(delete_version), methods=["DELETE"]),
    Route("/v2/repository/models/{model}/default", _synced(set_default), methods=["PUT"]),
    Route("/v2/repository/models/{model}", _synced(delete_model), methods=["DELETE"]),
]
