"""Publishing a model version: receive, unpack, validate, then publish atomically.

An upload is streamed to a folder of the repository's staging area (``<repo>/.maas/staging``,
on the repository's filesystem), counted against the upload limit as it comes (413) and hashed
(the ``sha256`` the client sent, if any, must match: 400). It is unpacked
(:mod:`maas_server.archive`), then loaded as a :class:`~maas_server.model_version.ModelVersion`
with the warmup run, off the event loop. Only a version that loads is renamed into
``<repo>/<name>/<version>/`` and swapped in (:meth:`ModelRepository.install`); the versions
serving before keep serving until then, and keep serving when anything fails. Whatever fails is
recorded in the :class:`~maas_server.model_index.ModelIndex` as a failed attempt, with its
reason; the staging folder is removed in every case. A full disk is a 507.

>>> publisher = Publisher(repository)  # doctest: +SKIP
>>> entry = await publisher.upload("mlp", None, chunks, Upload(limit=1 << 30))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .archive import remove_tree, safe_member_path, unpack
from .config import CONFIG_FILES, ConfigError, ModelConfig, load_config, parse_config
from .errors import (
    BadRequestError,
    ConflictError,
    InsufficientStorageError,
    InternalError,
    PayloadTooLargeError,
    ServerError,
)
from .model_index import ModelIndex, PublishedVersion
from .model_version import ModelVersion
from .received_files import Writer, receive, to_end, write_all
from .repository import MODEL_FILENAME, ModelRepository, folder_signature, valid_model_name
from .runtime import ModelLoadError

__all__ = ["Publisher", "Upload", "triton_config"]

logger = logging.getLogger("maas_server")

"""Bytes gathered before one write (and hash) on a worker thread."""


class _DeadlineError(ServerError):
    status_code = 504


_CANCELLED = _DeadlineError(
    "the upload did not finish within the server's request deadline (request_timeout_s)"
)
_TRITON_ONLY = frozenset(
    {
        "name",
        "backend",
        "platform",
        "input",
        "output",
        "default_model_filename",
        "parameters",
        "optimization",
        "model_warmup",
        "runtime",
    }
)


@dataclass
class Upload:
    """What comes with an upload besides its bytes."""

    limit: int
    """The most bytes accepted (the server's or the key's limit, whichever is lower)."""
    declared: int | None = None
    """The body's ``Content-Length``, when it has one."""
    sha256: str | None = None
    key: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    config: str | None = None
    """Configuration JSON sent beside a single-file upload."""
    make_default: bool = True


class Publisher:
    """Publishes versions into a repository (see the module's documentation). ``write`` writes
    the received bytes to disk (tests inject one that fails with ENOSPC)."""

    def __init__(self, repository: ModelRepository, *, write: Writer = write_all) -> None:
        self.repository = repository
        self.write = write
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def index(self) -> ModelIndex:
        return self.repository.index_store

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    # --- the two ways in ----------------------------------------------------------------------

    async def upload(
        self, name: str, version: int | None, chunks: AsyncIterator[bytes], upload: Upload
    ) -> dict[str, Any]:
        """Publish the streamed ``chunks`` as ``version`` of ``name`` (None: the next number);
        the published version's entry (as :meth:`describe` lists it)."""
        valid_model_name(name)
        if upload.declared is not None and upload.declared > upload.limit:
            error = PayloadTooLargeError(
                f"the upload (Content-Length: {upload.declared} bytes) exceeds the limit of "
                f"{upload.limit} bytes"
            )
            await self._failed(name, version, error, upload)
            raise error
        if version is not None:
            self._check_free(name, version)
        staged = await to_end(self._stage)
        try:
            try:
                path = staged / "upload.bin"
                received = await receive(
                    chunks,
                    path,
                    limit=upload.limit,
                    too_large=f"the upload exceeds the limit of {upload.limit} bytes",
                    write=self.write,
                )
                size, digest = received.size, received.sha256
                if size == 0:
                    raise BadRequestError("the upload is empty: send the model file or an archive")
                if upload.sha256 is not None and upload.sha256.lower() != digest:
                    raise BadRequestError(
                        f"checksum mismatch: the upload's sha256 is {digest}, the client sent "
                        f"{upload.sha256}"
                    )
                folder = await to_end(
                    unpack, path, staged / "version", limit=upload.limit, write=self.write
                )
                config_file = await to_end(_take_config, folder, staged)
                if config_file is not None and upload.config is not None:
                    raise BadRequestError(
                        "the archive holds a configuration file and one was sent beside it; "
                        "send one of them"
                    )
                if upload.config is not None:
                    config_file = await to_end(_write_config, staged, upload.config, self.write)
                return await self._publish(name, version, folder, config_file, size, digest, upload)
            except OSError as exc:
                raise _storage_error(exc) from None
        except ServerError as exc:
            await self._failed(name, version, exc, upload)
            raise
        except asyncio.CancelledError:
            await self._failed(name, version, _CANCELLED, upload)
            raise
        finally:
            await to_end(remove_tree, staged)

    async def load_files(
        self, name: str, config: str | None, files: dict[str, Any], upload: Upload
    ) -> dict[str, Any]:
        """Triton's ``load`` with ``file:<version>/<path>`` parameters (base64): the files
        become a version, which replaces a version of the same number."""
        valid_model_name(name)
        try:
            if config is None:
                raise BadRequestError(
                    "loading with files needs parameters.config (the model's configuration)"
                )
            version, decoded = _decode_files(files, upload.limit)
        except ServerError as exc:
            await self._failed(name, None, exc, upload)
            raise
        staged = await to_end(self._stage)
        try:
            try:
                folder = staged / "version"
                digest = hashlib.sha256()
                size = 0
                for relative, data in decoded:
                    target = folder.joinpath(*relative.parts)
                    await to_end(_write_file, target, data, self.write)
                    digest.update(data)
                    size += len(data)
                if not (folder / MODEL_FILENAME).is_file():
                    raise BadRequestError(
                        f"the files hold no {version}/{MODEL_FILENAME}: name the model file "
                        f"'file:{version}/{MODEL_FILENAME}'"
                    )
                config_file = await to_end(_write_config, staged, triton_config(config), self.write)
                return await self._publish(
                    name, version, folder, config_file, size, digest.hexdigest(), upload, True
                )
            except OSError as exc:
                raise _storage_error(exc) from None
        except ServerError as exc:
            await self._failed(name, None, exc, upload)
            raise
        except asyncio.CancelledError:
            await self._failed(name, None, _CANCELLED, upload)
            raise
        finally:
            await to_end(remove_tree, staged)

    # --- the steps ----------------------------------------------------------------------------

    def _stage(self) -> Path:
        try:
            self.repository.staging.mkdir(parents=True, exist_ok=True)
            staged = self.repository.staging / f"upload-{uuid.uuid4().hex}"
            staged.mkdir()
        except OSError as exc:
            raise _storage_error(exc) from None
        return staged

    def _check_free(self, name: str, version: int) -> None:
        if (self.repository.root / name / str(version)).exists():
            raise ConflictError(
                f"model {name!r} already has a version {version}; delete it first or publish "
                "another version"
            )

    async def _publish(
        self,
        name: str,
        version: int | None,
        folder: Path,
        config_file: Path | None,
        size: int,
        digest: str,
        upload: Upload,
        replace: bool = False,
    ) -> dict[str, Any]:
        async with self._lock(name):
            if version is None:
                version = self._next_version(name)
            elif not replace:
                self._check_free(name, version)
            entry = await to_end(
                self._commit, name, version, folder, config_file, size, digest, upload, replace
            )
        logger.info(
            "model %s version %s published by %s (%d bytes, sha256 %s)",
            name,
            version,
            upload.key or "anonymous",
            size,
            digest,
        )
        return self._entry(name, entry)

    def _commit(
        self,
        name: str,
        version: int,
        folder: Path,
        config_file: Path | None,
        size: int,
        digest: str,
        upload: Upload,
        replace: bool,
    ) -> PublishedVersion:
        """Validate, publish and record a version (blocking: in a worker thread)."""
        model = self._validate(name, version, folder, self._config_for(name, config_file))
        try:
            self.repository.install(
                name,
                version,
                folder,
                model,
                config_file=config_file,
                make_default=upload.make_default,
                replace=replace,
            )
        except BaseException:
            model.close()
            raise
        metadata = dict(upload.metadata)
        framework = metadata.pop("framework", None)
        return self.index.record_version(
            name,
            version,
            size=size,
            sha256=digest,
            key=upload.key,
            framework=str(framework) if framework is not None else "onnx",
            metadata=metadata,
        )

    def _next_version(self, name: str) -> int:
        known: set[int] = set(self.index.versions(name))
        if (self.repository.root / name).is_dir():
            known.update(self.repository.versions_on_disk(name))
            known.update(
                int(p.name) for p in (self.repository.root / name).iterdir() if p.name.isdigit()
            )
        return max(known, default=0) + 1

    def _config_for(self, name: str, config_file: Path | None) -> ModelConfig:
        try:
            if config_file is not None:
                return load_config(config_file.parent)
            model_dir = self.repository.root / name
            return load_config(model_dir) if model_dir.is_dir() else ModelConfig()
        except ConfigError as exc:
            raise BadRequestError(str(exc)) from None

    def _validate(self, name: str, version: int, folder: Path, config: ModelConfig) -> ModelVersion:
        try:
            return self.repository.open_version(
                name,
                version,
                folder / MODEL_FILENAME,
                config,
                self.repository.root / name,
                warmup=1,
            )
        except (ModelLoadError, ConfigError) as exc:
            # ONNX Runtime names the file it read: a staging path, of no use to the client
            reason = str(exc).replace(str(folder) + os.sep, "")
            raise BadRequestError(f"the model does not load: {reason}") from None

    async def _failed(
        self, name: str, version: int | None, error: ServerError, upload: Upload
    ) -> None:
        logger.warning("publishing model %s failed: %s", name, error.message)
        try:
            await to_end(
                self.index.record_attempt,
                name,
                version,
                error.status_code,
                error.message,
                key=upload.key,
                metadata=upload.metadata,
            )
        except Exception as exc:  # a full disk may refuse the record too; the answer stands
            logger.error("cannot record the failed attempt in the index: %s", exc)

    # --- what is published ----------------------------------------------------------------------

    def _entry(
        self, name: str, published: PublishedVersion | None, version: int = 0
    ) -> dict[str, Any]:
        if published is not None:
            version = published.version
        record = self.repository.record(name) if (self.repository.root / name).is_dir() else None
        status = record.versions.get(version) if record is not None else None
        folder = self.repository.root / name / str(version)
        if status is not None:
            state, reason = status.state, status.reason
        elif folder.is_dir():
            state = "UNAVAILABLE"
            if record is not None and not record.versions and record.reason:
                reason = record.reason  # the model is not loaded (or failed to)
            else:
                reason = "not loaded (the version policy does not select it)"
        else:
            state, reason = "UNAVAILABLE", "deleted"
        entry: dict[str, Any] = {
            "name": name,
            "version": str(version),
            "state": state,
            "reason": reason,
        }
        if published is not None:
            entry.update(
                size=published.size,
                sha256=published.sha256,
                created=_iso(published.created),
                framework=published.framework,
                key_name=published.key_name,
                metadata=published.metadata,
            )
        else:
            files = folder_signature(folder)
            entry.update(
                size=sum(f[1] for f in files),
                sha256=None,
                created=_iso(folder.stat().st_mtime) if folder.is_dir() else None,
                framework=None,
                key_name=None,
                metadata={},
            )
        entry["default"] = record is not None and record.default == version
        return entry

    def describe(self, name: str) -> dict[str, Any]:
        """Every version of ``name`` (on disk or published), the default one, and the failed
        attempts, newest first. 404 when nothing is known of the model."""
        valid_model_name(name)
        published = self.index.versions(name)
        attempts = self.index.attempts(name)
        model_dir = self.repository.root / name
        on_disk = self.repository.versions_on_disk(name) if model_dir.is_dir() else []
        if not model_dir.is_dir() and not published and not attempts:
            self.repository.model_dir(name)  # the 404
        versions = sorted(set(on_disk) | {v for v in published if v in on_disk})
        record = self.repository.record(name) if model_dir.is_dir() else None
        serving = None
        if record is not None and record.ready_versions():
            ready = record.ready_versions()
            serving = record.default if record.default in ready else ready[-1]
        return {
            "name": name,
            "default": str(record.default) if record and record.default is not None else None,
            "serving": str(serving) if serving is not None else None,
            "versions": [self._entry(name, published.get(v), v) for v in versions],
            "failed_attempts": [
                {
                    "version": str(a.version) if a.version is not None else None,
                    "created": _iso(a.created),
                    "status": a.status,
                    "reason": a.reason,
                    "key_name": a.key_name,
                    "metadata": a.metadata,
                }
                for a in attempts
            ],
        }


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + "Z"


def _storage_error(exc: OSError) -> ServerError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorageError("the server's disk is full: nothing of the upload was kept")
    logger.error("publishing failed on the server's disk: %s", exc)
    return InternalError(f"the server cannot write the upload: {exc.strerror or exc}")


def _take_config(folder: Path, staged: Path) -> Path | None:
    """Move a configuration file out of the version folder (it is the model's, kept beside
    the version folders)."""
    found = [folder / f for f in CONFIG_FILES if (folder / f).is_file()]
    if len(found) > 1:
        raise BadRequestError(f"the archive holds {len(found)} configuration files; keep one")
    if not found:
        return None
    target = staged / "config" / found[0].name
    target.parent.mkdir()
    os.rename(found[0], target)
    return target


def _write_config(staged: Path, text: str, write: Writer) -> Path:
    try:
        parse_config(json.loads(text), "the configuration sent")
    except json.JSONDecodeError as exc:
        raise BadRequestError(f"the configuration sent is not valid JSON: {exc}") from None
    except ConfigError as exc:
        raise BadRequestError(str(exc)) from None
    target = staged / "config" / "config.json"
    _write_file(target, text.encode(), write)
    return target


def _write_file(target: Path, data: bytes, write: Writer) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("xb") as out:
        write(out, data)


def _decode_files(files: dict[str, Any], limit: int) -> tuple[int, list[tuple[Any, bytes]]]:
    versions: set[str] = set()
    decoded = []
    total = 0
    for key, value in files.items():
        path = safe_member_path(key.removeprefix("file:"))
        if len(path.parts) < 2 or not path.parts[0].isdigit() or len(path.parts[0]) > 18:
            raise BadRequestError(
                f"parameter {key!r}: files are named 'file:<version>/<path>', such as "
                f"'file:1/{MODEL_FILENAME}'"
            )
        if not isinstance(value, str):
            raise BadRequestError(f"parameter {key!r} must be a base64 string")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequestError(f"parameter {key!r} is not valid base64: {exc}") from None
        total += len(data)
        if total > limit:
            raise PayloadTooLargeError(f"the files exceed the upload limit of {limit} bytes")
        versions.add(path.parts[0])
        decoded.append((path.relative_to(path.parts[0]), data))
    if len(versions) != 1:
        raise BadRequestError(
            f"the files name {len(versions)} versions ({sorted(versions)}); load one at a time"
        )
    return int(versions.pop()), decoded


def triton_config(text: str) -> str:
    """A Triton model configuration (JSON) as this server's: Triton-only fields (``name``,
    ``backend``, ``platform``, ``input``, ``output``, ...) are dropped and ``instance_group``
    becomes ``instance_count``; the rest must be fields of this server's configuration."""
    try:
        data = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise BadRequestError(f"parameters.config is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequestError("parameters.config must hold a JSON object")
    converted = {k: v for k, v in data.items() if k not in _TRITON_ONLY}
    groups = converted.pop("instance_group", None)
    if isinstance(groups, list) and groups:
        count = sum(int(g.get("count", 1)) for g in groups if isinstance(g, dict))
        converted.setdefault("instance_count", max(1, count))
    return json.dumps(converted)
