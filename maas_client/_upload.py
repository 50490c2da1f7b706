"""What ``client.models.upload`` sends: a model version as one streamed body, with its headers.

No I/O to the server here: :func:`prepare_upload` turns what a caller has (a path to a file or a
folder, bytes, an ``onnx.ModelProto``, a scikit-learn estimator, a ``torch.nn.Module``) into an
:class:`UploadBody` streamed from disk or memory in 1 MiB chunks (never base64, never read whole
into memory for a file), the ``X-Content-SHA256`` the server checks, the configuration and the
provenance. A folder is sent as a tar archive written to a temporary file first.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ._batched import Progress, ProgressLike, progress_bar
from ._body import CHUNK, BodyStream
from ._convert import ConvertedModel, to_onnx
from ._exceptions import InputError

__all__ = ["PreparedUpload", "UploadBody", "async_prepare_upload", "prepare_upload"]

SHA256_HEADER = "X-Content-SHA256"
METADATA_HEADER = "X-Maas-Metadata"
CONFIG_HEADER = "X-Maas-Config"
_CONFIG_FILES = ("config.json", "config.yaml", "config.yml")


class UploadBody(BodyStream):
    """A model body streamed in chunks from bytes or from a seekable file, with a progress bar.

    Each iteration starts from the beginning, so a retried attempt sends the whole body again.
    The lean transport sends it as it is read (``stream_from_source``), never whole in memory.
    """

    stream_from_source = True

    def __init__(self, source: bytes | IO[bytes], length: int, progress: Progress) -> None:
        self.source = source
        self.length = length
        self.progress = progress
        self.sent = 0

    def _chunks(self) -> Iterator[bytes]:
        self._restart()
        if isinstance(self.source, bytes):
            view = memoryview(self.source)
            for start in range(0, len(view), CHUNK):
                yield self._sent(bytes(view[start : start + CHUNK]))
            return
        self.source.seek(0)
        while chunk := self.source.read(CHUNK):
            yield self._sent(chunk)

    def _restart(self) -> None:
        if self.sent:
            self.progress.update(-self.sent)
            self.sent = 0

    def _sent(self, chunk: bytes) -> bytes:
        self.sent += len(chunk)
        self.progress.update(len(chunk))
        return chunk

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._chunks()
        done = object()
        while True:
            # Reading a file is blocking: one chunk at a time in a worker thread.
            chunk = await asyncio.to_thread(next, chunks, done)
            if chunk is done:
                return
            assert isinstance(chunk, bytes)
            yield chunk

    def close(self) -> None:
        self.progress.close()
        if not isinstance(self.source, bytes):
            self.source.close()


@dataclass
class PreparedUpload:
    """The body and headers of one publish, and what was converted on the way."""

    body: UploadBody
    headers: dict[str, str]
    framework: str
    converted: ConvertedModel | None = None


def _is_path(source: Any) -> bool:
    return isinstance(source, (str, os.PathLike))


def _json_header(value: Mapping[str, Any]) -> str:
    # Header values are ASCII: non-ASCII text travels as JSON escapes.
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=str)


def _config_text(config: Mapping[str, Any] | str | None) -> str | None:
    if config is None:
        return None
    if isinstance(config, str):
        try:
            json.loads(config)
        except json.JSONDecodeError as exc:
            raise InputError(f"config is not valid JSON: {exc}") from None
        return config
    return json.dumps(dict(config))


def _sha256_of_file(handle: IO[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    handle.seek(0)
    while chunk := handle.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _tar_folder(folder: Path, config: str | None) -> IO[bytes]:
    """The folder as a tar archive in a temporary file (links refused: the server would too)."""
    archive = tempfile.TemporaryFile()  # noqa: SIM115 - handed to the body, which closes it
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if path.is_symlink():
                raise InputError(f"{path} is a link; a published folder holds plain files only")
            if config is not None and relative.as_posix() in _CONFIG_FILES:
                continue  # the configuration given to upload() replaces the folder's
            tar.add(path, arcname=relative.as_posix(), recursive=False)
        if config is not None:
            _add_bytes(tar, "config.json", config.encode())
    return archive


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


CONVERTED_BATCH = 1024
"""The ``max_batch_size`` of a converted model, whose first dimension is the batch (unless the
configuration given says otherwise)."""


def _converted_config(converted: ConvertedModel, config: str | None) -> str:
    merged: dict[str, Any] = {"max_batch_size": CONVERTED_BATCH}
    if converted.labels:
        merged["labels"] = "labels.txt"
    if config is not None:
        merged.update(json.loads(config))
    return json.dumps(merged)


def _converted_archive(converted: ConvertedModel, config: str) -> bytes:
    """A converted model with its labels file: a version folder as a tar archive in memory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        _add_bytes(tar, "model.onnx", converted.model_bytes)
        _add_bytes(tar, "labels.txt", (converted.labels_text() or "").encode())
        _add_bytes(tar, "config.json", config.encode())
    return buffer.getvalue()


def prepare_upload(
    source: Any,
    *,
    name: str,
    config: Mapping[str, Any] | str | None = None,
    metadata: Mapping[str, Any] | None = None,
    example_inputs: Any = None,
    progress: ProgressLike = True,
) -> PreparedUpload:
    """The body and headers that publish ``source`` (see :meth:`Models.upload`)."""
    config_text = _config_text(config)
    provenance: dict[str, Any] = {}
    converted: ConvertedModel | None = None
    handle: IO[bytes] | None = None
    data: bytes | None = None
    send_config = config_text
    if _is_path(source):
        path = Path(source)
        if path.is_dir():
            handle = _tar_folder(path, config_text)
            send_config = None  # inside the archive
            framework = "onnx"
        elif path.is_file():
            handle = path.open("rb")
            framework = "onnx"
        else:
            raise InputError(f"no model file or folder at {path}")
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise InputError("the model's bytes are empty")
        framework = "onnx"
    else:
        converted = to_onnx(source, example_inputs=example_inputs)
        framework = converted.framework
        provenance.update(converted.provenance())
        send_config = _converted_config(converted, config_text)
        if converted.labels:
            data = _converted_archive(converted, send_config)
            send_config = None
        else:
            data = converted.model_bytes
    provenance.setdefault("framework", framework)
    provenance.update(metadata or {})
    if handle is not None:
        sha256, length = _sha256_of_file(handle)
        source_body: bytes | IO[bytes] = handle
    else:
        assert data is not None
        sha256, length = hashlib.sha256(data).hexdigest(), len(data)
        source_body = data
    headers = {
        "Content-Type": "application/octet-stream",
        SHA256_HEADER: sha256,
        METADATA_HEADER: _json_header(provenance),
    }
    if send_config is not None:
        headers[CONFIG_HEADER] = json.dumps(json.loads(send_config), ensure_ascii=True)
    bar = progress_bar(progress, length, f"upload {name}", unit="B")
    return PreparedUpload(UploadBody(source_body, length, bar), headers, framework, converted)


async def async_prepare_upload(source: Any, **kwargs: Any) -> PreparedUpload:
    """:func:`prepare_upload` in a worker thread (it reads, hashes and may convert or archive)."""
    return await asyncio.to_thread(prepare_upload, source, **kwargs)
