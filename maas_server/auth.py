"""API keys: who may call which endpoint, on which models, how often and how many at once.

Keys come from a keys file (hashes only, see :mod:`maas_server.keys_file`) that is re-read when
it changes, and from one admin key given at start (``MAAS_SERVER_API_KEY`` for ``maas serve``).
Each request names its key as ``Authorization: Bearer <key>``:

- no key or an unknown key: 401 with ``WWW-Authenticate: Bearer``;
- a key without the scope the endpoint needs, or not allowed the model the path names: 403;
- over the key's rate (a token bucket) or its concurrency quota: 429 with ``Retry-After``.

Scopes: ``infer`` for inference and generation (POST under ``/v2/models/`` and ``/v1/``),
``read`` for metadata, health, statistics, metrics, the OpenAPI document and reading datasets
and jobs, ``admin`` for the repository API, ``jobs`` to upload and delete datasets and to create
and cancel jobs (``/v2/datasets``, ``/v2/jobs``). Paths in ``Settings.open_paths`` (health
by default) need no key.

Routes that find the model in the body instead of the path (``/v1/completions``) call
:func:`require_model_access`; routes that list models filter them with :func:`model_allowed`.

>>> store = KeyStore(Path("keys.json"), admin_key=None)  # doctest: +SKIP
>>> app = RequestGuard(app, access=AccessControl(store, ("/v2/health/live",)))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import Request

from .asgi import Refusal, Scope, header
from .errors import ForbiddenError
from .keys_file import SCOPES, KeyEntry, KeysFileError, read_keys
from .stats import Rejections

__all__ = [
    "ADMIN_KEY_NAME",
    "SCOPE_KEY",
    "SCOPE_MODEL",
    "AccessControl",
    "ApiKey",
    "Clock",
    "KeyStore",
    "TokenBucket",
    "access_rule",
    "model_allowed",
    "path_target",
    "request_key",
    "require_model_access",
    "route_path",
]

logger = logging.getLogger("maas_server")

Clock = Callable[[], float]
ADMIN_KEY_NAME = "admin"
"""The name under which the admin key given at start appears in logs."""

_ADMITTED_ENTRIES = 4096
_DATA_PATHS = ("/v2/datasets", "/v2/jobs")
"""Datasets and jobs: ``read`` to read, ``jobs`` to upload, create, delete and cancel."""
SCOPE_KEY = "maas.api_key"
"""Where the middleware leaves the request's :class:`ApiKey` in the ASGI scope."""
SCOPE_MODEL = "maas.model"
"""Where :func:`require_model_access` leaves the model a body names, for the access log."""


class TokenBucket:
    """``rate`` requests per second on average, up to ``burst`` at once.

    ``take()`` spends a token and answers 0.0, or spends nothing and answers the seconds until a
    token is there. ``clock`` (seconds, monotonic) is injectable for tests.
    """

    def __init__(self, rate: float, burst: int, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def take(self) -> float:
        now = self._clock()
        tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return 0.0
        self._tokens = tokens
        return (1.0 - tokens) / self.rate


@dataclass(eq=False)
class ApiKey:
    """A key the server accepts: what it may do, and its rate and concurrency state."""

    name: str
    digest: str
    scopes: frozenset[str]
    models: frozenset[str] | None = None
    bucket: TokenBucket | None = None
    concurrency: int | None = None
    in_flight: int = field(default=0, compare=False)
    limits: tuple[float | None, int | None, int | None] = (None, None, None)
    max_upload_bytes: int | None = None

    def allows_model(self, model: str) -> bool:
        return self.models is None or model in self.models


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


class KeyStore:
    """The keys the server accepts, kept in step with the keys file.

    The file is looked at (one ``stat``) at most every ``reload_interval`` seconds, from the
    request path; when its modification time, size or inode changed it is read again. A file
    that cannot be read or parsed keeps the previous keys (and logs why); a file that was deleted
    leaves only the admin key. Rate buckets and in-flight counts survive a reload for keys whose
    hash and limits did not change.
    """

    def __init__(
        self,
        path: Path | None,
        admin_key: str | None = None,
        *,
        reload_interval: float = 1.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.path = path
        self.reload_interval = reload_interval
        self._clock = clock
        self._admin: ApiKey | None = None
        if admin_key:
            self._admin = ApiKey(ADMIN_KEY_NAME, _digest(admin_key), frozenset(SCOPES))
        self._keys: dict[str, ApiKey] = {}
        self.generation = 0  # goes up whenever the keys change
        self._signature: tuple[int, int, int] | None = None
        self._refused: tuple[int, int, int] | None = None  # a file version not taken, and why
        self._checked = clock()
        if path is not None:
            if not path.is_file():
                raise FileNotFoundError(f"API keys file {path} does not exist")
            signature = self._stat()
            self._install(read_keys(path))  # a bad file at start is an error, not a warning
            self._signature = signature
        else:
            self._install([])

    @property
    def names(self) -> list[str]:
        return sorted(k.name for k in self._keys.values())

    def maybe_reload(self) -> None:
        """Look at the keys file if the reload interval has passed since the last look."""
        if self.path is not None:
            now = self._clock()
            if now - self._checked >= self.reload_interval:
                self._checked = now
                self.reload()

    def lookup(self, key: str) -> ApiKey | None:
        """The accepted key equal to ``key``, or None."""
        self.maybe_reload()
        digest = _digest(key)
        found = self._keys.get(digest)
        # The dict is indexed by SHA-256 digests, whose timing says nothing about the keys; the
        # final check compares in constant time all the same.
        if found is not None and hmac.compare_digest(found.digest, digest):
            return found
        return None

    def reload(self, force: bool = False) -> bool:
        """Read the keys file again if it changed (or ``force``); True when the keys changed."""
        if self.path is None:
            return False
        signature = self._stat()
        if not force and signature == self._signature:
            return False
        if signature is None:
            logger.warning("API keys file %s is gone: only the admin key is accepted", self.path)
            self._signature = None
            self._install([])
            return True
        if not force and signature == self._refused:
            return False  # said once already, until the file changes again
        try:
            entries = read_keys(self.path)
            keys = self._build(entries)
        except Exception as exc:  # whatever the file holds, the previous keys go on serving
            self._refused = signature
            reason = exc if isinstance(exc, KeysFileError) else f"{type(exc).__name__}: {exc}"
            logger.error(
                "API keys file %s not reloaded, keeping the previous %d key(s): %s",
                self.path,
                len(self._keys),
                reason,
            )
            return False
        self._refused = None
        self._signature = signature
        self._keys = keys
        self.generation += 1
        logger.info("API keys reloaded from %s: %d key(s)", self.path, len(entries))
        return True

    def _stat(self) -> tuple[int, int, int] | None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _install(self, entries: Iterable[KeyEntry]) -> None:
        self._keys = self._build(entries)
        self.generation += 1

    def _build(self, entries: Iterable[KeyEntry]) -> dict[str, ApiKey]:
        """The keys for ``entries``; unchanged keys keep their rate and in-flight state."""
        previous = self._keys
        keys: dict[str, ApiKey] = {}
        for entry in entries:
            digest = entry.hash.removeprefix("sha256:")
            limits = (entry.rate, entry.burst, entry.concurrency)
            old = previous.get(digest)
            if old is not None and old.limits == limits and old.name == entry.name:
                key = old
                key.scopes = frozenset(entry.scopes)
                key.models = frozenset(entry.models) if entry.models is not None else None
                key.max_upload_bytes = entry.max_upload_bytes
            else:
                bucket = None
                if entry.rate is not None:
                    burst = entry.burst or max(1, math.ceil(entry.rate))
                    bucket = TokenBucket(entry.rate, burst, self._clock)
                key = ApiKey(
                    name=entry.name,
                    digest=digest,
                    scopes=frozenset(entry.scopes),
                    models=frozenset(entry.models) if entry.models is not None else None,
                    bucket=bucket,
                    concurrency=entry.concurrency,
                    limits=limits,
                    max_upload_bytes=entry.max_upload_bytes,
                )
            keys[digest] = key
        if self._admin is not None:
            keys[self._admin.digest] = self._admin
        return keys


def route_path(scope: Scope) -> str:
    """The path the router matches: ``scope["path"]`` less the ``root_path`` it starts with.

    Behind a proxy prefix (uvicorn ``--root-path``) or when the app is mounted under a path,
    ``scope["path"]`` holds the prefix and Starlette's router strips it before matching; access
    is decided on what the router will match, never on the prefixed path (the same rule as
    ``starlette._utils.get_route_path``).
    """
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    if path[len(root_path)] == "/":
        return path[len(root_path) :]
    return path


def path_target(path: str) -> tuple[str | None, str | None]:
    """The model and version a request path names (``/v2/models/{m}[/versions/{v}]/...`` and
    ``/v2/repository/models/{m}/...``), as the router will match them."""
    if path.startswith("/v2/models/"):
        rest = path[11:]
    elif path.startswith("/v2/repository/models/"):
        rest = path[22:]
    else:
        return None, None
    parts = rest.split("/")
    model = parts[0]
    if not model or (model == "stats" and len(parts) == 1):
        return None, None
    version = parts[2] if len(parts) > 2 and parts[1] == "versions" and parts[2] else None
    return model, version


def access_rule(method: str, path: str) -> tuple[str, str | None]:
    """The scope a request needs and the model its path names (None: no model, or every model,
    which the route then filters with :func:`model_allowed`)."""
    if path.startswith("/v2/repository/"):
        return "admin", path_target(path)[0]
    if path.startswith(_DATA_PATHS):
        return ("read" if method in ("GET", "HEAD") else "jobs"), None
    scope = "read" if method in ("GET", "HEAD") else "infer"
    if path.startswith("/v2/models/"):
        return scope, path_target(path)[0]
    if path.startswith("/v1/models/"):
        return scope, path[11:] or None
    return scope, None


def _bearer(scope: Scope) -> str | None:
    value = header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.decode("latin-1").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _retry_headers(seconds: float) -> list[tuple[bytes, bytes]]:
    return [
        (b"retry-after", str(max(1, math.ceil(seconds))).encode()),
        (b"retry-after-ms", str(max(1, int(seconds * 1000))).encode()),
    ]


class AccessControl:
    """Decides, from the ASGI scope alone, whether a request may go on (see the module's
    documentation): :meth:`check` admits it or says how to refuse it, :meth:`release` gives back
    its concurrency slot. :class:`~maas_server.guard.RequestGuard` calls both."""

    def __init__(
        self,
        store: KeyStore,
        open_paths: Iterable[str] = (),
        rejections: Rejections | None = None,
    ) -> None:
        self.store = store
        self.open_paths = frozenset(open_paths)
        self.rejections = rejections or Rejections()
        # (Authorization header, method, path) -> the key, for requests that passed every check
        # but the rate and the quota: the common case costs one dictionary lookup, not a parse,
        # a hash and the path rules. A header that matches no entry almost never meets a hash
        # collision, so the lookup's timing says nothing about the keys. Emptied when the keys
        # change.
        self._admitted: dict[tuple[bytes, str, str], ApiKey] = {}
        self._generation = store.generation

    def check(self, scope: Scope) -> tuple[ApiKey | None, Refusal | None]:
        """The request's key (also left in ``scope[SCOPE_KEY]``) and None when it may go on,
        or a refusal. An admitted request of a key with a concurrency quota holds a slot.
        Decided on :func:`route_path`, the path the router matches."""
        path = route_path(scope)
        if path in self.open_paths:
            return None, None
        store = self.store
        store.maybe_reload()
        if store.generation != self._generation:
            self._admitted.clear()
            self._generation = store.generation
        raw = header(scope, b"authorization")
        cache_key = (raw or b"", scope["method"], path)
        key = self._admitted.get(cache_key)
        if key is None:
            key, refusal = self._check_key(scope, path)
            if refusal is not None:
                return key, refusal
            assert key is not None
            if len(self._admitted) >= _ADMITTED_ENTRIES:
                self._admitted.clear()
            self._admitted[cache_key] = key
        scope[SCOPE_KEY] = key
        return key, self._check_limits(key)

    def _check_key(self, scope: Scope, path: str) -> tuple[ApiKey | None, Refusal | None]:
        token = _bearer(scope)
        key = self.store.lookup(token) if token is not None else None
        if key is None:
            self.rejections.add("unauthenticated")
            challenge = 'Bearer realm="maas"'
            if token is not None:
                challenge += ', error="invalid_token"'
            message = (
                "missing API key: send 'Authorization: Bearer <key>'"
                if token is None
                else "invalid API key"
            )
            return None, Refusal(401, message, [(b"www-authenticate", challenge.encode())])
        scope[SCOPE_KEY] = key
        needed, model = access_rule(scope["method"], path)
        if needed not in key.scopes:
            self.rejections.add("forbidden")
            return key, Refusal(
                403, f"API key {key.name!r} lacks the {needed!r} scope this endpoint needs"
            )
        if key.models is not None:
            if path == "/metrics":
                self.rejections.add("forbidden")
                return key, Refusal(
                    403, f"API key {key.name!r} is limited to some models; /metrics covers them all"
                )
            if model is not None and model not in key.models:
                self.rejections.add("forbidden")
                return key, Refusal(403, f"API key {key.name!r} may not use model {model!r}")
        return key, None

    def _check_limits(self, key: ApiKey) -> Refusal | None:
        if key.bucket is not None:
            wait = key.bucket.take()
            if wait > 0.0:
                self.rejections.add("rate_limited")
                return Refusal(
                    429,
                    f"API key {key.name!r} is over its rate of {key.bucket.rate:g} requests/s; "
                    f"retry in {wait:.2f} s",
                    _retry_headers(wait),
                )
        if key.concurrency is not None:
            if key.in_flight >= key.concurrency:
                self.rejections.add("concurrency_limit")
                return Refusal(
                    429,
                    f"API key {key.name!r} already has {key.concurrency} requests in flight",
                    _retry_headers(1.0),
                )
            key.in_flight += 1
        return None

    @staticmethod
    def release(key: ApiKey | None) -> None:
        """The end of a request that :meth:`check` admitted."""
        if key is not None and key.concurrency is not None:
            key.in_flight -= 1


def request_key(request: Request) -> ApiKey | None:
    """The API key a request was authorized with (None when access control is off)."""
    key: ApiKey | None = request.scope.get(SCOPE_KEY)
    return key


def model_allowed(request: Request, model: str) -> bool:
    """Whether the request's key may use ``model`` (always, when access control is off)."""
    key = request_key(request)
    return key is None or key.allows_model(model)


def require_model_access(request: Request, model: str) -> None:
    """For routes that find the model in the request body rather than in the path (the OpenAI
    style ``/v1/completions``, ``/v1/chat/completions``): raise 403 when the request's key may
    not use ``model``. Also records the model for the access log. The scope (``infer``) has
    already been checked by the middleware."""
    request.scope[SCOPE_MODEL] = model
    key = request_key(request)
    if key is not None and not key.allows_model(model):
        app = request.scope.get("app")
        rejections: Rejections | None = getattr(getattr(app, "state", None), "rejections", None)
        if rejections is not None:
            rejections.add("forbidden")
        raise ForbiddenError(f"API key {key.name!r} may not use model {model!r}")
