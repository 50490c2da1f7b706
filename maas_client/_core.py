"""What the blocking and the asynchronous client share that is not I/O: their settings,
:meth:`~ClientCore.with_options`, embedded mode, and what they learn from the server.

Everything a call does goes through the client's pipeline (``_async/_pipeline.py``, and the
blocking one generated from it): this module only holds the settings it reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import httpx

from ._endpoints import EndpointPool, Endpoints, parse_urls
from ._logs import setup_logging
from ._options import as_timeout, injected_timeout
from ._retry import RetryPolicy
from ._settings import DEFAULT_BASE_URL, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, EnvSettings
from ._types import NOT_GIVEN, HeadersLike, NotGiven, TimeoutLike
from .types import ModelMetadata, ServerMetadata

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["ClientCore", "EventHooks", "SharedState", "client_version"]

_HttpT = TypeVar("_HttpT", httpx.Client, httpx.AsyncClient)

EventHooks = Mapping[str, Sequence[Callable[..., Any]]]
"""``{"request": [...], "response": [...]}``, as :class:`httpx.Client` takes them."""


def client_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("maas")
    except PackageNotFoundError:  # pragma: no cover - source tree without install
        return "0.0.0"


class _LazyVersion:
    def __init__(self) -> None:
        self._value: str | None = None

    def get(self) -> str:
        if self._value is None:
            self._value = client_version()
        return self._value


_VERSION = _LazyVersion()


class SharedState:
    """What a client learns from the server, shared with its :meth:`with_options` copies."""

    def __init__(self) -> None:
        self.server_metadata: ServerMetadata | None = None
        self.binary: bool | None = None
        self.model_metadata: dict[tuple[str, str | None], ModelMetadata] = {}
        self.urls: dict[str, httpx.URL] = {}

    def forget_model(self, name: str) -> None:
        for key in [k for k in self.model_metadata if k[0] == name]:
            self.model_metadata.pop(key, None)


class ClientCore(Generic[_HttpT]):
    """Settings shared by :class:`~maas_client.Client` and :class:`~maas_client.AsyncClient`.

    ``_HttpT`` is the kind of :class:`httpx.Client` a client may be given (sync or async).
    """

    base_url: str
    api_key: str | None
    timeout: httpx.Timeout
    max_retries: int
    deadline: float | None
    binary: bool | None
    validate: bool
    retry_policy: RetryPolicy
    _default_headers: dict[str, str]
    _state: SharedState
    _pool: EndpointPool | None
    """The servers of a client given several URLs (``None`` for one: ``base_url``)."""

    def __init__(
        self,
        base_url: str | Sequence[str] | Endpoints | None = None,
        *,
        api_key: str | None = None,
        timeout: TimeoutLike | NotGiven = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
        deadline: float | None = None,
        headers: HeadersLike | None = None,
        http_client: _HttpT | None = None,
        binary: bool | None = None,
        validate: bool = True,
        retry_policy: RetryPolicy | None = None,
        limits: httpx.Limits | None = None,
        event_hooks: EventHooks | None = None,
        verify: Any = True,
    ) -> None:
        env = EnvSettings.from_env()
        setup_logging(env.log)
        self._set_endpoints(base_url or env.base_url or DEFAULT_BASE_URL)
        self.api_key = api_key if api_key is not None else env.api_key
        http_timeout = injected_timeout(http_client)
        if not isinstance(timeout, NotGiven):
            self.timeout = as_timeout(timeout)
        elif http_timeout is not None:
            self.timeout = http_timeout
        elif env.timeout is not None:
            self.timeout = httpx.Timeout(env.timeout, connect=min(env.timeout, 5.0))
        else:
            self.timeout = DEFAULT_TIMEOUT
        if not isinstance(max_retries, NotGiven):
            self.max_retries = max_retries
        elif env.max_retries is not None:
            self.max_retries = int(env.max_retries)
        else:
            self.max_retries = DEFAULT_MAX_RETRIES
        if self.max_retries < 0:
            raise ValueError("max_retries must not be negative")
        self.deadline = deadline
        self.binary = binary
        self.validate = validate
        self.retry_policy = retry_policy or RetryPolicy()
        self._custom_headers = dict(headers or {})
        self._state = SharedState()
        self._build_default_headers()
        self.lean = env.transport != "httpx"
        """Plain ``http://`` goes through the lean transport (``MAAS_TRANSPORT=httpx``: httpx's)."""
        self._open(http_client, limits, event_hooks or {}, verify)

    def _open(
        self,
        http_client: _HttpT | None,
        limits: httpx.Limits | None,
        hooks: EventHooks,
        verify: Any,
    ) -> None:
        """Set up the pipeline and its transport (sync or async)."""
        raise NotImplementedError

    def _copied(self) -> None:
        """A :meth:`with_options` copy was made: give it a pipeline of its own over the shared
        transport (sync or async)."""
        raise NotImplementedError

    def with_options(
        self,
        *,
        base_url: str | Sequence[str] | Endpoints | None = None,
        api_key: str | None = None,
        timeout: TimeoutLike | NotGiven = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
        deadline: float | NotGiven | None = NOT_GIVEN,
        headers: HeadersLike | None = None,
        binary: bool | NotGiven | None = NOT_GIVEN,
        validate: bool | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> Self:
        """A copy with other settings, sharing this client's connection pool and caches.

        >>> client.with_options(timeout=5.0, max_retries=0).infer("digits", x)  # doctest: +SKIP
        """
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.__dict__.pop("with_raw_response", None)
        if base_url is not None:
            endpoints = parse_urls(base_url)
            current = self._pool.settings.urls if self._pool is not None else (self.base_url,)
            if endpoints.urls != current:
                copy._set_endpoints(endpoints)
                copy._state = SharedState()
        if api_key is not None:
            copy.api_key = api_key
        if not isinstance(timeout, NotGiven):
            copy.timeout = as_timeout(timeout)
        if not isinstance(max_retries, NotGiven):
            if max_retries < 0:
                raise ValueError("max_retries must not be negative")
            copy.max_retries = max_retries
        if not isinstance(deadline, NotGiven):
            copy.deadline = deadline
        if not isinstance(binary, NotGiven):
            copy.binary = binary
        if validate is not None:
            copy.validate = validate
        if retry_policy is not None:
            copy.retry_policy = retry_policy
        if headers:
            copy._custom_headers = {**self._custom_headers, **headers}
        copy._build_default_headers()
        copy._copied()
        return copy

    @classmethod
    def local(
        cls,
        repository: str | os.PathLike[str] | None = None,
        *,
        settings: Any = None,
        **client_options: Any,
    ) -> Self:
        """A client of a server run in-process over ``repository`` (default: the bundled
        examples), with no network port; needs the ``server`` extra.

        ``settings`` (a :class:`maas_server.Settings`) replaces ``repository``; the other
        keyword arguments are the client's. Closing the client stops the server. An
        :class:`AsyncClient`'s server starts (loads its models) at the first request, on the
        caller's event loop. A blocking client left open is closed at interpreter exit, with a
        :class:`ResourceWarning`.

        >>> with Client.local("./models") as client:  # doctest: +SKIP
        ...     client.infer("digits", x)
        >>> async with AsyncClient.local("./models") as client:  # doctest: +SKIP
        ...     await client.infer("digits", x)
        """
        from ._local import LOCAL_URL, local_app

        client = cls(LOCAL_URL, **client_options)
        client._serve_in_process(local_app(repository, settings))
        return client

    def _serve_in_process(self, app: Any) -> None:
        """Send everything to ``app`` in-process (sync or async transport)."""
        raise NotImplementedError

    def _set_endpoints(self, target: str | Sequence[str] | Endpoints) -> None:
        endpoints = parse_urls(target)
        self.base_url = endpoints.urls[0]
        self._pool = EndpointPool(endpoints) if len(endpoints.urls) > 1 else None

    def _build_default_headers(self) -> None:
        default = {
            "Accept-Encoding": "identity",
            "User-Agent": f"maas-client/{_VERSION.get()}",
        }
        if self.api_key:
            default["Authorization"] = f"Bearer {self.api_key}"
        default.update(self._custom_headers)
        self._default_headers = default
