"""The provenance of published versions: an SQLite database in WAL mode under the repository.

``<repository>/.maas/index.sqlite`` holds, per model, each published version (size, sha256,
created time, framework, the API key that uploaded it, free-form metadata), each failed attempt
(with its reason) and the default version that unversioned requests use. It survives restarts.
The file is made on the first write only, so a server over a read-only repository that publishes
nothing never touches it. Every method is short and takes one lock: call them from any thread.

>>> index = ModelIndex(Path("models"))  # doctest: +SKIP
>>> index.record_version("mlp", 2, size=1024, sha256="ab12", key="ci")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["INDEX_DIR", "Attempt", "ModelIndex", "PublishedVersion"]

INDEX_DIR = ".maas"
"""The folder under the repository for the index and the staging area (not a model name: model
names start with a letter or digit)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    created REAL NOT NULL,
    framework TEXT,
    key_name TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    version INTEGER,
    created REAL NOT NULL,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL,
    key_name TEXT,
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS defaults (
    model TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
"""
_MAX_ATTEMPTS_SHOWN = 20


@dataclass(frozen=True)
class PublishedVersion:
    """A version published through the API."""

    model: str
    version: int
    size: int
    sha256: str
    created: float
    framework: str | None = None
    key_name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Attempt:
    """A publication that failed, and why (``status``: the HTTP status it was answered with)."""

    model: str
    version: int | None
    created: float
    status: int
    reason: str
    key_name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class ModelIndex:
    """The provenance store of one repository (see the module's documentation)."""

    def __init__(self, root: Path) -> None:
        self.path = root / INDEX_DIR / "index.sqlite"
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        if self._db is not None:
            return self._db
        if not create and not self.path.is_file():
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        self._db = db
        return db

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        with self._lock:
            db = self._connect(create=True)
            assert db is not None
            db.execute(sql, args)

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            db = self._connect(create=False)
            if db is None:
                return []
            return db.execute(sql, args).fetchall()

    def record_version(
        self,
        model: str,
        version: int,
        *,
        size: int,
        sha256: str,
        key: str | None = None,
        framework: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> PublishedVersion:
        entry = PublishedVersion(
            model, version, size, sha256, time.time(), framework, key, metadata or {}
        )
        self._write(
            "INSERT OR REPLACE INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                model,
                version,
                size,
                sha256,
                entry.created,
                framework,
                key,
                json.dumps(entry.metadata),
            ),
        )
        return entry

    def record_attempt(
        self,
        model: str,
        version: int | None,
        status: int,
        reason: str,
        *,
        key: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._write(
            "INSERT INTO attempts (model, version, created, status, reason, key_name, metadata) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (model, version, time.time(), status, reason, key, json.dumps(metadata or {})),
        )

    def versions(self, model: str) -> dict[int, PublishedVersion]:
        rows = self._read("SELECT * FROM versions WHERE model = ? ORDER BY version", (model,))
        return {
            row[1]: PublishedVersion(
                row[0], row[1], row[2], row[3], row[4], row[5], row[6], json.loads(row[7])
            )
            for row in rows
        }

    def attempts(self, model: str, limit: int = _MAX_ATTEMPTS_SHOWN) -> list[Attempt]:
        """The latest failed attempts, newest first."""
        rows = self._read(
            "SELECT model, version, created, status, reason, key_name, metadata FROM attempts "
            "WHERE model = ? ORDER BY id DESC LIMIT ?",
            (model, limit),
        )
        return [Attempt(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in rows]

    def forget_version(self, model: str, version: int) -> None:
        if self._read("SELECT 1 FROM versions WHERE model = ? LIMIT 1", (model,)):
            self._write("DELETE FROM versions WHERE model = ? AND version = ?", (model, version))

    def forget_model(self, model: str) -> None:
        """Drop what is known of a deleted model (its failed attempts stay, as history)."""
        if self.path.is_file():
            self._write("DELETE FROM versions WHERE model = ?", (model,))
            self._write("DELETE FROM defaults WHERE model = ?", (model,))

    def default(self, model: str) -> int | None:
        rows = self._read("SELECT version FROM defaults WHERE model = ?", (model,))
        return int(rows[0][0]) if rows else None

    def set_default(self, model: str, version: int | None) -> None:
        if version is None:
            if self.path.is_file():
                self._write("DELETE FROM defaults WHERE model = ?", (model,))
            return
        self._write("INSERT OR REPLACE INTO defaults VALUES (?, ?)", (model, version))

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
