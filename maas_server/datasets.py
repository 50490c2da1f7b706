"""The dataset store: uploaded tables and arrays, versioned, on disk under the data folder.

``<data_dir>/datasets.sqlite3`` (SQLite, WAL) is the catalog: one row per version with its
format, kind, schema, rows, size, sha256, created time and owner (the API key that uploaded
it). ``<data_dir>/datasets/<name>/<version>/`` holds the uploaded bytes (``original.<format>``)
and the stored form that reads use (:mod:`maas_server.dataset_formats`).

Nothing is half-written, whatever happens: an upload is streamed (and hashed) into a staging
folder ``<data_dir>/datasets/.staging/<id>/``, read and checked there, fsynced, then renamed into
place; only then is its catalog row committed. A version folder without a catalog row (a crash
between the two) and whatever is left in the staging area are removed when the store opens.
Deleting commits the catalog first, then removes the files. Version numbers are never reused:
uploading a name again makes version N+1, even after deletes.

A version that a job reads is *open* (:meth:`DatasetStore.open`); deleting it is refused with a
409 until it is closed.

>>> store = DatasetStore(Path("data"))  # doctest: +SKIP
>>> info = store.create_from_columns("scores", {"x": np.arange(3.0)}, owner=None)  # doctest: +SKIP
>>> with store.open("scores") as dataset:  # doctest: +SKIP
...     dataset.read(0, 2)["x"]
array([0., 1.])
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq

from maas_wire.datasets import DATASET_FORMATS, DatasetField, DatasetInfo

from .dataset_formats import (
    Ingested,
    arrays_to_table,
    ingest,
    map_arrays,
    original_name,
    preview_rows,
    read_rows,
    read_table,
    sniff_format,
    store_arrays,
    write_download,
)
from .errors import (
    BadRequestError,
    ConflictError,
    InsufficientStorageError,
    InternalError,
    ServerError,
)
from .received_files import BATCH_BYTES, Writer, receive, to_end, write_all

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "CATALOG_FILE",
    "DatasetInUse",
    "DatasetNotFound",
    "DatasetStore",
    "OpenDataset",
    "Writer",
    "storage_error",
    "valid_dataset_name",
    "write_all",
]

logger = logging.getLogger("maas_server")

CATALOG_FILE = "datasets.sqlite3"
_USERS_LOCK = ".users.lock"
"""Every open store holds a shared lock on this file; only a store that alone holds it (no other
process, a worker of ``maas serve --workers N`` say, uses the folder) removes what a crash
left, which could otherwise be another process's upload in progress."""
_FILES_DIR = "datasets"
_STAGING = ".staging"
"""Bytes gathered before one write (and hash) on a worker thread."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    format TEXT NOT NULL,
    kind TEXT NOT NULL,
    schema TEXT NOT NULL,
    rows INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    created TEXT NOT NULL,
    owner TEXT,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS last_versions (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
"""
_COLUMNS = "name, version, format, kind, schema, rows, size_bytes, sha256, created, owner"


class DatasetNotFound(ServerError, KeyError):
    """No such dataset, or no such version of it, or not one the caller may see (404)."""

    status_code = 404

    def __str__(self) -> str:
        return self.message


class DatasetInUse(ConflictError):
    """The version is open (a job reads it): it cannot be deleted now (409)."""


def valid_dataset_name(name: str) -> str:
    """``name``, or 400 when it cannot name a dataset (it is a folder name on the server)."""
    if not _NAME.match(name) or name in (".", ".."):
        raise BadRequestError(
            f"invalid dataset name {name!r}: use up to 128 letters, digits, '_', '-' and '.', "
            "starting with a letter or digit"
        )
    return name


def storage_error(exc: OSError, what: str = "the upload") -> ServerError:
    """A full disk (ENOSPC, EDQUOT) as a 507; any other disk fault as a 500 (logged)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc):
        return InsufficientStorageError(f"the server's disk is full: nothing of {what} was kept")
    logger.error("datasets: disk fault: %s", exc)
    return InternalError(f"the server cannot write {what}: {exc.strerror or exc}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    for path in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OpenDataset:
    """One version of a dataset, held open for reading: while it is open, it cannot be deleted.
    A context manager; :meth:`close` (or leaving the ``with``) releases it.

    >>> with store.open("digits") as dataset:  # doctest: +SKIP
    ...     batch = dataset.read(0, 256, columns=["pixels"])
    """

    def __init__(self, store: DatasetStore, info: DatasetInfo, folder: Path, user: str) -> None:
        self.info = info
        self.folder = folder
        self._store = store
        self._user = user
        self._table: pa.Table | None = None
        self._arrays: list[np.ndarray[Any, Any]] | None = None
        self._closed = False

    @property
    def schema(self) -> list[DatasetField]:
        return self.info.schema_

    def num_rows(self) -> int:
        return self.info.rows

    def read(
        self, start: int, stop: int, columns: Sequence[str] | None = None
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Rows ``start:stop`` as numpy arrays with a leading row axis (array datasets keep
        their per-row shape; strings are object arrays of ``str``; missing values are NaN in
        floats and None in objects)."""
        start = max(0, start)
        stop = min(stop, self.info.rows)
        if self.info.kind == "table":
            if self._table is None:
                self._table = read_table(self.folder, "table", self.schema)
        elif self._arrays is None:
            self._arrays = map_arrays(self.folder, self.schema)
        return read_rows(
            self.folder,
            self.info.kind,
            self.schema,
            start,
            stop,
            columns,
            table=self._table,
            arrays=self._arrays,
        )

    def read_table(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The whole version (or some columns) as a pyarrow table."""
        return read_table(self.folder, self.info.kind, self.schema, columns)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._table = None
            self._arrays = None
            self._store._release(self.info.name, self.info.version, self._user)

    def __enter__(self) -> OpenDataset:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class DatasetStore:
    """The datasets under one data folder (see the module's documentation). Every method may be
    called from any thread; the blocking ones (uploads, conversions) belong on worker threads.
    ``write`` writes received bytes to disk (tests inject one that fails with ENOSPC)."""

    def __init__(self, root: Path, *, write: Writer = write_all) -> None:
        self.root = Path(root)
        self.files = self.root / _FILES_DIR
        self.write = write
        self._lock = threading.RLock()
        self._open: dict[tuple[str, int], list[str]] = {}
        self.files.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            self.root / CATALOG_FILE, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._users = os.open(self.root / _USERS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # another process uses the folder: what looks left over may be its work
        else:
            self._recover()
        fcntl.flock(self._users, fcntl.LOCK_SH)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._users >= 0:
                os.close(self._users)  # and its lock
                self._users = -1

    # --- the catalog ------------------------------------------------------------------------

    def _recover(self) -> None:
        """Remove what a crash left: the staging area, and version folders the catalog does
        not know (renamed into place, then killed before the catalog row was committed)."""
        shutil.rmtree(self.files / _STAGING, ignore_errors=True)
        known = {(n, v) for n, v in self._db.execute("SELECT name, version FROM datasets")}
        for folder in self.files.iterdir():
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            for version in folder.iterdir():
                if not (version.name.isdigit() and (folder.name, int(version.name)) in known):
                    logger.warning(
                        "datasets: removing %s, which the catalog does not list", version
                    )
                    shutil.rmtree(version, ignore_errors=True)
                    continue
                for partial in version.glob(".download-*"):  # a conversion cut short
                    partial.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty

    @staticmethod
    def _info(row: Sequence[Any]) -> DatasetInfo:
        name, version, format, kind, schema, rows, size, sha256, created, owner = row
        return DatasetInfo(
            name=name,
            version=version,
            format=format,
            kind=kind,
            schema=[DatasetField.model_validate(f) for f in json.loads(schema)],
            rows=rows,
            size_bytes=size,
            sha256=sha256,
            created=created,
            owner=owner,
        )

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def get(self, name: str, version: int | None = None) -> DatasetInfo:
        """One version (the latest by default); :class:`DatasetNotFound` when there is none."""
        if version is None:
            rows = self._rows(
                f"SELECT {_COLUMNS} FROM datasets WHERE name = ? ORDER BY version DESC LIMIT 1",
                (name,),
            )
            if not rows:
                raise DatasetNotFound(f"no dataset named {name!r}")
        else:
            rows = self._rows(
                f"SELECT {_COLUMNS} FROM datasets WHERE name = ? AND version = ?", (name, version)
            )
            if not rows:
                if not self.versions(name):
                    raise DatasetNotFound(f"no dataset named {name!r}")
                raise DatasetNotFound(f"dataset {name!r} has no version {version}")
        return self._info(rows[0])

    def versions(self, name: str) -> list[int]:
        """The versions of ``name`` on hand, oldest first."""
        rows = self._rows("SELECT version FROM datasets WHERE name = ? ORDER BY version", (name,))
        return [r[0] for r in rows]

    def list_datasets(
        self, owner: str | None = None, *, everyone: bool = True
    ) -> list[DatasetInfo]:
        """The latest version of every dataset, by name; only ``owner``'s unless ``everyone``."""
        rows = self._rows(
            f"SELECT {_COLUMNS} FROM datasets d WHERE version = "
            "(SELECT MAX(version) FROM datasets WHERE name = d.name) ORDER BY name"
        )
        found = [self._info(r) for r in rows]
        return found if everyone else [i for i in found if i.owner == owner]

    def folder(self, info: DatasetInfo) -> Path:
        return self.files / info.name / str(info.version)

    # --- reading ----------------------------------------------------------------------------

    def open(self, name: str, version: int | None = None, *, user: str = "a job") -> OpenDataset:
        """Hold a version open for reading (the latest by default): it cannot be deleted until
        it is closed. ``user`` names the reader in the 409 a delete gets (``"job 42"``)."""
        with self._lock:
            info = self.get(name, version)
            self._open.setdefault((info.name, info.version), []).append(user)
        return OpenDataset(self, info, self.folder(info), user)

    def _release(self, name: str, version: int, user: str) -> None:
        with self._lock:
            users = self._open.get((name, version))
            if users and user in users:
                users.remove(user)
                if not users:
                    del self._open[(name, version)]

    def in_use(self, name: str, version: int) -> list[str]:
        """Who holds this version open."""
        with self._lock:
            return list(self._open.get((name, version), ()))

    def preview(self, info: DatasetInfo, count: int = 5) -> list[dict[str, Any]]:
        """The first ``count`` rows, ready for JSON."""
        return preview_rows(self.folder(info), info.kind, info.schema_, info.rows, count)

    def download_path(self, info: DatasetInfo, format: str) -> Path:
        """A file holding the version as ``format`` (``original``, ``parquet``, ``csv``,
        ``npz``). Conversions are made once, written then renamed, and kept beside the version.
        Blocking."""
        folder = self.folder(info)
        if format in ("original", info.format):
            return folder / original_name(info.format)
        target = folder / f"download.{format}"
        if target.is_file():
            return target
        temp = folder / f".download-{uuid.uuid4().hex}.{format}"
        try:
            write_download(folder, info.kind, info.schema_, format, temp)
            os.replace(temp, target)
        except OSError as exc:
            raise storage_error(exc, "the conversion") from None
        finally:
            with contextlib.suppress(OSError):
                temp.unlink()
        return target

    # --- writing ----------------------------------------------------------------------------

    def _stage(self) -> Path:
        try:
            staged = self.files / _STAGING / uuid.uuid4().hex
            staged.mkdir(parents=True)
        except OSError as exc:
            raise storage_error(exc) from None
        return staged

    async def upload(
        self,
        name: str,
        chunks: AsyncIterator[bytes],
        *,
        format: str | None,
        limit: int,
        owner: str | None,
    ) -> DatasetInfo:
        """Store the streamed ``chunks`` as the next version of ``name``. ``format`` None: told
        from the first bytes (CSV when they say nothing). 413 past ``limit`` bytes, 507 on a
        full disk, 400 naming what is wrong with the data; nothing is kept on any error."""
        valid_dataset_name(name)
        if format is not None and format not in DATASET_FORMATS:
            raise BadRequestError(
                f"unknown dataset format {format!r}; use one of {list(DATASET_FORMATS)}"
            )
        staged = await to_end(self._stage)
        try:
            received = staged / "upload.bin"
            try:
                got = await receive(
                    chunks,
                    received,
                    limit=limit,
                    too_large=f"the dataset upload exceeds the server's limit of {limit} bytes "
                    "(max_dataset_bytes)",
                    write=self.write,
                    head_bytes=512,
                )
            except OSError as exc:
                raise storage_error(exc) from None
            size, digest, head = got.size, got.sha256, got.head
            if size == 0:
                raise BadRequestError("the upload is empty: send a dataset file with rows")
            chosen = format or sniff_format(head) or "csv"
            return await to_end(self._finish, name, staged, received, chosen, size, digest, owner)
        finally:
            await to_end(shutil.rmtree, staged, True)

    def _finish(
        self,
        name: str,
        staged: Path,
        received: Path,
        format: str,
        size: int,
        digest: str,
        owner: str | None,
        arrays: dict[str, np.ndarray[Any, Any]] | None = None,
    ) -> DatasetInfo:
        """Read, check and store a received upload, then publish it (blocking). ``arrays``:
        what the upload holds, when the caller has it in memory (not read back)."""
        try:
            original = staged / "version" / original_name(format)
            original.parent.mkdir()
            os.rename(received, original)
            if arrays is not None:
                found = store_arrays(arrays, original.parent)
            else:
                found = ingest(original, format, original.parent)
            _fsync_tree(original.parent)
            return self._commit(name, original.parent, format, found, size, digest, owner)
        except OSError as exc:
            raise storage_error(exc) from None

    def _commit(
        self,
        name: str,
        folder: Path,
        format: str,
        found: Ingested,
        size: int,
        digest: str,
        owner: str | None,
    ) -> DatasetInfo:
        with self._lock:
            last = self._db.execute(
                "SELECT version FROM last_versions WHERE name = ?", (name,)
            ).fetchone()
            newest = self._db.execute(
                "SELECT MAX(version) FROM datasets WHERE name = ?", (name,)
            ).fetchone()
            version = max(last[0] if last else 0, newest[0] or 0) + 1
            target = self.files / name / str(version)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():  # a leftover no catalog row names: never served
                shutil.rmtree(target)
            os.rename(folder, target)
            _fsync_dir(target.parent)
            info = DatasetInfo(
                name=name,
                version=version,
                format=format,
                kind=found.kind,
                schema=found.schema,
                rows=found.rows,
                size_bytes=size,
                sha256=digest,
                created=_now(),
                owner=owner,
            )
            schema = json.dumps([f.model_dump() for f in found.schema])
            try:
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.execute(
                        f"INSERT INTO datasets ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            name,
                            version,
                            format,
                            found.kind,
                            schema,
                            found.rows,
                            size,
                            digest,
                            info.created,
                            owner,
                        ),
                    )
                    self._db.execute(
                        "INSERT OR REPLACE INTO last_versions VALUES (?, ?)", (name, version)
                    )
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                raise
        logger.info(
            "dataset %s version %d stored for %s (%s, %d rows, %d bytes, sha256 %s)",
            name,
            version,
            owner or "anonymous",
            format,
            found.rows,
            size,
            digest,
        )
        return info

    def create_from_file(
        self, name: str, path: Path, format: str, *, owner: str | None
    ) -> DatasetInfo:
        """Store a copy of the file ``path`` (in ``format``) as the next version of ``name``.
        Blocking."""
        valid_dataset_name(name)
        staged = self._stage()
        try:
            received = staged / "upload.bin"
            digest = hashlib.sha256()
            size = 0
            try:
                with path.open("rb") as source, received.open("xb") as out:
                    while block := source.read(BATCH_BYTES):
                        digest.update(block)
                        size += len(block)
                        self.write(out, block)
            except OSError as exc:
                raise storage_error(exc) from None
            return self._finish(name, staged, received, format, size, digest.hexdigest(), owner)
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def create_from_columns(
        self,
        name: str,
        columns: Mapping[str, np.ndarray[Any, Any]],
        *,
        owner: str | None,
        format: str = "parquet",
    ) -> DatasetInfo:
        """Store named columns (numpy arrays sharing their first axis, the rows) as the next
        version of ``name``, as a Parquet table (``format="parquet"``) or NPZ arrays
        (``"npz"``). Blocking; used for job results."""
        valid_dataset_name(name)
        if format not in ("parquet", "npz"):
            raise BadRequestError(f"datasets are made from columns as parquet or npz, not {format}")
        staged = self._stage()
        try:
            path = staged / "upload.bin"
            try:
                if format == "npz":
                    with path.open("wb") as out:
                        np.savez(out, **dict(columns))  # type: ignore[arg-type]
                else:
                    pq.write_table(arrays_to_table(dict(columns)), path)
                digest = hashlib.sha256()
                with path.open("rb") as written:
                    while block := written.read(BATCH_BYTES):
                        digest.update(block)
            except OSError as exc:
                raise storage_error(exc, "the dataset") from None
            size = path.stat().st_size
            arrays = dict(columns) if format == "npz" else None  # no need to read them back
            return self._finish(
                name, staged, path, format, size, digest.hexdigest(), owner, arrays=arrays
            )
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def delete(self, name: str, version: int | None = None) -> list[int]:
        """Delete one version, or every version of ``name``; the versions deleted. 409 while
        one of them is open (a job reads it), 404 when there is nothing to delete."""
        with self._lock:
            versions = (
                [self.get(name, version).version] if version is not None else self.versions(name)
            )
            if not versions:
                raise DatasetNotFound(f"no dataset named {name!r}")
            for v in versions:
                users = self._open.get((name, v))
                if users:
                    raise DatasetInUse(
                        f"dataset {name!r} version {v} is in use by {users[0]}; "
                        "delete it once that is finished or cancelled"
                    )
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "DELETE FROM datasets WHERE name = ? AND version = ?",
                    [(name, v) for v in versions],
                )
        for v in versions:
            shutil.rmtree(self.files / name / str(v), ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.files / name).rmdir()
        logger.info("dataset %s versions %s deleted", name, versions)
        return versions

    def iter_infos(self) -> Iterator[DatasetInfo]:
        """Every version of every dataset, by name then version."""
        for row in self._rows(f"SELECT {_COLUMNS} FROM datasets ORDER BY name, version"):
            yield self._info(row)
