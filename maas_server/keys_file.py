"""The API keys file: who may call the server, stored as hashes of the keys, never the keys.

``{"keys": [{"name": "ci", "hash": "sha256:<hex>", "scopes": ["infer", "read"], "models": null,
"rate": 50.0, "burst": 100, "concurrency": 8, "max_upload_bytes": 1073741824,
"created": "2024-05-01T12:00:00Z"}]}``

This module uses the standard library only: ``maas keys`` imports it on machines without the
server extra. The server reads the file through :mod:`maas_server.auth`.

>>> key, entry = add_key(Path("keys.json"), "ci", ["infer", "read"], rate=50.0)  # doctest: +SKIP
>>> print(key)  # shown once; the file holds only entry.hash  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "KEY_PREFIX",
    "MAX_LIMIT",
    "MAX_UPLOAD_LIMIT",
    "SCOPES",
    "KeyEntry",
    "KeysFileError",
    "add_key",
    "generate_key",
    "hash_key",
    "parse_rate",
    "read_keys",
    "revoke_key",
    "write_keys",
]

SCOPES = ("infer", "read", "admin", "jobs")
"""``infer``: inference and generation; ``read``: metadata, health, statistics, metrics, and
reading datasets and jobs; ``admin``: the repository API (index, load, unload); ``jobs``:
uploading and deleting datasets, creating and cancelling jobs."""

KEY_PREFIX = "maas_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}$")
_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


class KeysFileError(ValueError):
    """The keys file, or an entry of it, cannot be used; the message says where and why."""


@dataclass(frozen=True)
class KeyEntry:
    """One key of the file. ``models=None`` allows every model; ``rate`` is requests per second
    (``burst`` requests may come at once, default: one second's worth); ``concurrency`` caps the
    key's requests in flight; ``max_upload_bytes`` caps the models it may publish (below the
    server's own limit). ``None`` means no limit."""

    name: str
    hash: str
    scopes: tuple[str, ...]
    models: tuple[str, ...] | None = None
    rate: float | None = None
    burst: int | None = None
    concurrency: int | None = None
    created: str | None = None
    max_upload_bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "hash": self.hash,
            "scopes": list(self.scopes),
            "models": list(self.models) if self.models is not None else None,
            "rate": self.rate,
            "burst": self.burst,
            "concurrency": self.concurrency,
            "created": self.created,
        }
        if self.max_upload_bytes is not None:
            data["max_upload_bytes"] = self.max_upload_bytes
        return data

    @classmethod
    def from_json(cls, data: Any, where: str = "key") -> KeyEntry:
        """An entry checked field by field; :class:`KeysFileError` names what is wrong."""
        if not isinstance(data, dict):
            raise KeysFileError(f"{where}: must be a JSON object")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise KeysFileError(f"{where}: unknown field {unknown[0]!r}")
        name = data.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise KeysFileError(
                f"{where}: 'name' must be 1-64 letters, digits, '_', '.', '@' or '-', not {name!r}"
            )
        where = f"key {name!r}"
        digest = data.get("hash")
        if not isinstance(digest, str) or not _HASH.match(digest):
            raise KeysFileError(f"{where}: 'hash' must be 'sha256:' and 64 lowercase hex digits")
        scopes = data.get("scopes")
        if not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes):
            raise KeysFileError(f"{where}: 'scopes' must be a non-empty list of {list(SCOPES)}")
        models = data.get("models")
        if models is not None and (
            not isinstance(models, list) or any(not isinstance(m, str) or not m for m in models)
        ):
            raise KeysFileError(f"{where}: 'models' must be null or a list of model names")
        return cls(
            name=name,
            hash=digest,
            scopes=tuple(dict.fromkeys(scopes)),
            models=tuple(models) if models is not None else None,
            rate=_positive(data.get("rate"), float, f"{where}: 'rate'"),
            burst=_positive(data.get("burst"), int, f"{where}: 'burst'"),
            concurrency=_positive(data.get("concurrency"), int, f"{where}: 'concurrency'"),
            created=_optional_str(data.get("created"), f"{where}: 'created'"),
            max_upload_bytes=_positive(
                data.get("max_upload_bytes"),
                int,
                f"{where}: 'max_upload_bytes'",
                MAX_UPLOAD_LIMIT,
            ),
        )


MAX_LIMIT = 1_000_000_000
"""The largest ``rate``, ``burst`` or ``concurrency`` a key may have (more is no limit)."""
MAX_UPLOAD_LIMIT = 1 << 50
"""The largest ``max_upload_bytes`` a key may have (1 PiB)."""


def _positive(value: Any, kind: type[int] | type[float], what: str, bound: int = MAX_LIMIT) -> Any:
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and 0 < value <= bound  # also refuses NaN and infinities (1e999)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        raise KeysFileError(
            f"{what} must be null or a positive {kind.__name__} up to {bound:.0e}, not {shown}"
        )
    return kind(value)


def _optional_str(value: Any, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise KeysFileError(f"{what} must be null or a string")
    return value


def generate_key() -> str:
    """A new API key: ``maas_`` and 43 URL-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The stored form of a key. The keys are 256-bit random tokens, so a plain SHA-256 is as
    hard to reverse as the key is to guess; a slow password hash would only slow every request."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_rate(text: str) -> float:
    """Requests per second from ``"50"``, ``"50/s"``, ``"3000/m"`` or ``"100/h"``."""
    number, _, unit = text.strip().partition("/")
    try:
        value = float(number)
    except ValueError:
        raise KeysFileError(f"rate {text!r}: use a number of requests per s, m or h") from None
    per = _RATE_UNITS.get(unit.strip().lower() or "s")
    if per is None or not 0 < value <= MAX_LIMIT * per:
        raise KeysFileError(f"rate {text!r}: use a positive number per s, m or h, like 50/s")
    return value / per


def read_keys(path: Path) -> list[KeyEntry]:
    """The entries of a keys file; a missing file holds none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except UnicodeDecodeError as exc:
        raise KeysFileError(
            f"keys file {path} is not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None
    except OSError as exc:
        raise KeysFileError(f"cannot read keys file {path}: {exc.strerror}") from None
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, integers over 4300 digits
        raise KeysFileError(f"keys file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise KeysFileError(f'keys file {path} must be a JSON object {{"keys": [...]}}')
    entries = [
        KeyEntry.from_json(item, f"keys file {path}, key #{i}")
        for i, item in enumerate(data["keys"])
    ]
    _check_unique(entries, str(path))
    return entries


def _check_unique(entries: Sequence[KeyEntry], where: str) -> None:
    names: set[str] = set()
    hashes: set[str] = set()
    for entry in entries:
        if entry.name in names:
            raise KeysFileError(f"{where}: two keys are named {entry.name!r}")
        if entry.hash in hashes:
            raise KeysFileError(f"{where}: key {entry.name!r} has the hash of another key")
        names.add(entry.name)
        hashes.add(entry.hash)


def write_keys(path: Path, entries: Iterable[KeyEntry]) -> None:
    """Replace the keys file in one step (readable by its owner only), so that a server reading
    it never sees half a file."""
    entries = list(entries)
    _check_unique(entries, str(path))
    text = json.dumps({"keys": [e.to_json() for e in entries]}, indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def add_key(
    path: Path,
    name: str,
    scopes: Sequence[str],
    *,
    models: Sequence[str] | None = None,
    rate: float | None = None,
    burst: int | None = None,
    concurrency: int | None = None,
) -> tuple[str, KeyEntry]:
    """Make a key, append its hash to the file and return the key (the only time it is seen)."""
    entries = read_keys(path)
    if any(e.name == name for e in entries):
        raise KeysFileError(f"a key named {name!r} already exists in {path}; revoke it first")
    key = generate_key()
    created = datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    entry = KeyEntry.from_json(
        {
            "name": name,
            "hash": hash_key(key),
            "scopes": list(scopes),
            "models": list(models) if models is not None else None,
            "rate": rate,
            "burst": burst,
            "concurrency": concurrency,
            "created": created,
        },
        f"key {name!r}",
    )
    write_keys(path, [*entries, entry])
    return key, entry


def revoke_key(path: Path, name: str) -> bool:
    """Remove the key named ``name``; False when there is none."""
    entries = read_keys(path)
    kept = [e for e in entries if e.name != name]
    if len(kept) == len(entries):
        return False
    write_keys(path, kept)
    return True
