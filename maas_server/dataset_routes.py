"""HTTP endpoints of the datasets: upload, list, show, download, delete.

- ``POST /v2/datasets/{name}``: the body is the file, streamed to disk (never held whole in
  memory: it takes at most 1 MiB of the server's body budget); its format comes from
  ``?format=`` (csv, parquet, jsonl, npy, npz), else from ``Content-Type``, else from its first
  bytes (CSV when they say nothing). 201 with the new version's :class:`DatasetInfo`; 413 past
  ``max_dataset_bytes`` (or the key's ``max_upload_bytes``), 507 on a full disk, 400 naming
  what is wrong with the data.
- ``GET /v2/datasets``: the latest version of each dataset the key may see.
- ``GET /v2/datasets/{name}[/versions/{v}]``: a :class:`DatasetPreview` (info, versions, the
  first ``?rows=`` rows, 5 by default).
- ``GET /v2/datasets/{name}[/versions/{v}]/data?format=original|parquet|csv|npz``: the file,
  streamed (``?version=`` also picks a version).
- ``DELETE /v2/datasets/{name}[/versions/{v}]``: 409 while a job reads the version.

Access (when keys are on): ``read`` to read, ``jobs`` to upload and delete (see
:func:`maas_server.auth.access_rule`). A dataset belongs to the key that uploaded it: other
keys get 404 for it, unless they have the ``admin`` scope.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from maas_wire.datasets import (
    DATASET_FORMATS,
    DATASET_MEDIA_TYPES,
    DOWNLOAD_FORMATS,
    DatasetInfo,
    DatasetList,
    DatasetPreview,
)

from .auth import ApiKey, request_key
from .datasets import DatasetNotFound, DatasetStore, valid_dataset_name
from .errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError
from .request_body import holding_body, upload_stream

__all__ = ["close_dataset_store", "dataset_routes", "dataset_store"]

_HELD = 1024 * 1024
"""Body bytes an upload holds at once (what the store gathers before one write)."""
_CHUNK = 1024 * 1024
_MAX_PREVIEW_ROWS = 100
_CONTENT_TYPES = {
    "text/csv": "csv",
    "application/csv": "csv",
    "application/vnd.apache.parquet": "parquet",
    "application/parquet": "parquet",
    "application/x-parquet": "parquet",
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/jsonlines": "jsonl",
    "application/x-jsonlines": "jsonl",
    "application/x-npy": "npy",
    "application/npy": "npy",
    "application/x-npz": "npz",
    "application/npz": "npz",
}
_SNIFFED = ("", "application/octet-stream")


def dataset_store(app: Starlette) -> DatasetStore:
    """The app's dataset store, opened on first use under ``settings.data_root`` (a server that
    never touches datasets never makes the folder)."""
    store: DatasetStore | None = getattr(app.state, "datasets", None)
    if store is None:
        store = DatasetStore(app.state.settings.data_root)
        app.state.datasets = store
    return store


def close_dataset_store(app: Starlette) -> None:
    """Close the store, if it was opened (the app's lifespan ends)."""
    store: DatasetStore | None = getattr(app.state, "datasets", None)
    if store is not None:
        store.close()
        app.state.datasets = None


def _json(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


def _dump(info: DatasetInfo) -> dict[str, Any]:
    return info.model_dump(by_alias=True)


def _version(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise BadRequestError(f"invalid dataset version {text!r}: versions are integers")
    return int(text)


def _sees_all(key: ApiKey | None) -> bool:
    return key is None or "admin" in key.scopes


def _visible(request: Request, info: DatasetInfo) -> DatasetInfo:
    """``info``, or 404 when the request's key may not see it (it is another key's)."""
    key = request_key(request)
    if not _sees_all(key) and (key is None or info.owner != key.name):
        raise DatasetNotFound(f"no dataset named {info.name!r}")
    return info


async def _info(request: Request, version: int | None = None) -> DatasetInfo:
    name = request.path_params["name"]
    if version is None and "version" in request.path_params:
        version = _version(request.path_params["version"])
    store = dataset_store(request.app)
    info = await asyncio.to_thread(store.get, name, version)
    return _visible(request, info)


def _format(request: Request) -> str | None:
    chosen = request.query_params.get("format")
    if chosen is not None:
        chosen = chosen.strip().lower()
        if chosen not in DATASET_FORMATS:
            raise BadRequestError(
                f"unknown dataset format {chosen!r}; use one of {list(DATASET_FORMATS)}"
            )
        return chosen
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media in _SNIFFED:
        return None
    found = _CONTENT_TYPES.get(media)
    if found is None:
        raise UnsupportedMediaTypeError(
            f"Content-Type {media!r} is not a dataset format; send text/csv, "
            "application/vnd.apache.parquet, application/x-ndjson, application/x-npy or "
            "application/x-npz, or say ?format="
        )
    return found


async def upload_dataset(request: Request) -> Response:
    """Store the streamed body as the next version of a dataset."""
    name = valid_dataset_name(request.path_params["name"])
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaTypeError("send dataset uploads without Content-Encoding")
    format = _format(request)
    key = request_key(request)
    limit: int = request.app.state.settings.max_dataset_bytes
    if key is not None and key.max_upload_bytes is not None:
        limit = min(limit, key.max_upload_bytes)
    text = request.headers.get("content-length", "").strip()
    declared = int(text) if text.isascii() and text.isdigit() and len(text) < 20 else None
    if declared is not None and declared > limit:
        raise PayloadTooLargeError(
            f"the dataset upload (Content-Length: {declared} bytes) exceeds the server's limit "
            f"of {limit} bytes (max_dataset_bytes)"
        )
    store = dataset_store(request.app)
    with holding_body(request) as hold:
        hold.grow(min(declared, _HELD) if declared is not None else _HELD)
        info = await store.upload(
            name,
            upload_stream(request, declared),
            format=format,
            limit=limit,
            owner=key.name if key is not None else None,
        )
    return _json(_dump(info), status_code=201)


async def list_datasets(request: Request) -> Response:
    """The latest version of every dataset the key may see."""
    key = request_key(request)
    store = dataset_store(request.app)
    found = await asyncio.to_thread(
        store.list_datasets, key.name if key is not None else None, everyone=_sees_all(key)
    )
    return _json(DatasetList(datasets=found).model_dump(by_alias=True))


async def show_dataset(request: Request) -> Response:
    """A version's info, the dataset's versions and the first rows."""
    info = await _info(request)
    text = request.query_params.get("rows", "5")
    if not (text.isascii() and text.isdigit()) or int(text) > _MAX_PREVIEW_ROWS:
        raise BadRequestError(f"rows must be an integer from 0 to {_MAX_PREVIEW_ROWS}")
    store = dataset_store(request.app)

    def describe() -> DatasetPreview:
        with store.open(info.name, info.version, user="a preview") as dataset:
            rows = store.preview(dataset.info, int(text))
        return DatasetPreview(**_dump(info), versions=store.versions(info.name), preview=rows)

    preview = await asyncio.to_thread(describe)
    return Response(
        orjson.dumps(preview.model_dump(by_alias=True), option=orjson.OPT_SERIALIZE_NUMPY),
        media_type="application/json",
    )


async def _chunks(file: IO[bytes]) -> AsyncIterator[bytes]:
    try:
        while block := await asyncio.to_thread(file.read, _CHUNK):
            yield block
    finally:
        file.close()


async def download_dataset(request: Request) -> Response:
    """A version's file: the uploaded bytes or a conversion, streamed."""
    requested = request.query_params.get("version")
    info = await _info(request, _version(requested) if requested else None)
    format = request.query_params.get("format", "original").strip().lower()
    if format not in DOWNLOAD_FORMATS:
        raise BadRequestError(
            f"cannot download a dataset as {format!r}; use one of {list(DOWNLOAD_FORMATS)}"
        )
    store = dataset_store(request.app)

    def prepare() -> tuple[Path, IO[bytes]]:
        # Held open while the file is made and opened: a delete meanwhile gets 409, and once
        # it is open, a delete no longer matters to this download.
        with store.open(info.name, info.version, user="a download"):
            path = store.download_path(info, format)
            return path, path.open("rb")

    path, file = await asyncio.to_thread(prepare)
    kind = info.format if format == "original" else format
    size = path.stat().st_size if path.exists() else None
    headers = {
        "Content-Disposition": f'attachment; filename="{info.name}-v{info.version}.{kind}"',
        "X-Dataset-Version": str(info.version),
    }
    if size is not None:
        headers["Content-Length"] = str(size)
    if kind == info.format:
        headers["X-Content-SHA256"] = info.sha256
    if request.method == "HEAD":
        file.close()
        return Response(headers=headers, media_type=DATASET_MEDIA_TYPES[kind])
    return StreamingResponse(_chunks(file), media_type=DATASET_MEDIA_TYPES[kind], headers=headers)


async def delete_dataset(request: Request) -> Response:
    """Delete a version, or every version of a dataset (409 while a job reads one)."""
    name = request.path_params["name"]
    version = _version(request.path_params["version"]) if "version" in request.path_params else None
    store = dataset_store(request.app)
    key = request_key(request)

    def delete() -> list[int]:
        if not _sees_all(key):
            for v in [version] if version is not None else store.versions(name):
                _visible(request, store.get(name, v))
        return store.delete(name, version)

    deleted = await asyncio.to_thread(delete)
    return _json({"name": name, "deleted": deleted})


_ONE = "/v2/datasets/{name}"
_VERSION = _ONE + "/versions/{version}"
dataset_routes: list[Route] = [
    Route("/v2/datasets", list_datasets, methods=["GET"]),
    Route(_ONE, upload_dataset, methods=["POST"]),
    Route(_ONE, show_dataset, methods=["GET"]),
    Route(_ONE, delete_dataset, methods=["DELETE"]),
    Route(_ONE + "/data", download_dataset, methods=["GET"]),
    Route(_VERSION, show_dataset, methods=["GET"]),
    Route(_VERSION, delete_dataset, methods=["DELETE"]),
    Route(_VERSION + "/data", download_dataset, methods=["GET"]),
]
