"""Everything the sync and async clients share that is not I/O.

A call is planned (:class:`RequestPlan`: method, path, body, whether it is idempotent), the
options are resolved against the client's settings (:class:`ResolvedOptions`), an
:class:`httpx.Request` is built for each attempt, and the answer (:class:`Answer`) is parsed by a
pure function. The two clients differ only in how they send and wait.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast
from urllib.parse import quote

import httpx
import numpy as np
import orjson
from pydantic import BaseModel, ValidationError

from maas_wire.codec import HEADER_LENGTH, CodecError, from_wire
from maas_wire.protocol import BinaryPiece, decode_response, encode_request_parts

from ._endpoints import EndpointPool, Endpoints, Route, parse_urls
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InputError,
    InternalServerError,
    ModelNotFoundError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UnprocessableEntityError,
)
from ._inputs import Output, collect_inputs, prepare_inputs, request_outputs
from ._logs import logger, setup_logging
from ._result import InferResult, RepositoryIndex, Timing
from ._retry import RetryPolicy, RetryScope, is_retryable
from ._settings import DEFAULT_BASE_URL, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, EnvSettings
from ._types import NOT_GIVEN, CallOptions, HeadersLike, NotGiven, TimeoutLike, VersionLike
from .types import (
    InferenceStatistics,
    ModelConfiguration,
    ModelMetadata,
    RepositoryModel,
    ServerMetadata,
)

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "NO_METADATA_STATUSES",
    "REQUEST_ID_HEADER",
    "Answer",
    "BaseClient",
    "BodyStream",
    "InferCall",
    "RequestPlan",
    "ResolvedOptions",
    "binary_supported",
    "clamp_timeout",
    "client_version",
    "connection_error",
    "make_status_error",
    "model_path",
    "parse_flag",
    "parse_model",
    "parse_model_config",
    "parse_model_metadata",
    "parse_models",
    "parse_nothing",
    "parse_server_metadata",
    "parse_statistics",
    "plan_health",
    "plan_load",
    "plan_model_config",
    "plan_model_metadata",
    "plan_model_ready",
    "plan_model_stats",
    "plan_repository_index",
    "plan_server_metadata",
    "plan_unload",
]

_M = TypeVar("_M", bound=BaseModel)
_HttpT = TypeVar("_HttpT", httpx.Client, httpx.AsyncClient)

REQUEST_ID_HEADER = "X-Request-ID"
NO_METADATA_STATUSES = frozenset({404, 405, 501})
"""Answers to ``GET /v2`` that mean the server has no metadata endpoint (then: JSON tensors)."""
SMALL_BODY = 64 * 1024
"""Bodies up to this size are joined into one ``bytes``; larger ones stream from the tensors."""
CHUNK = 1 << 20


def client_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("maas")
    except PackageNotFoundError:  # pragma: no cover - source tree without install
        return "0.0.0"


# --- request plans ---------------------------------------------------------------------------


class BodyStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A binary request body sent from the tensors' own memory, in chunks of at most 1 MiB.

    Nothing is copied here. The lean transport hands each chunk to the socket as it is; httpx's
    own transport (h11) copies each chunk once on its way there. Non-contiguous arrays are made
    contiguous first (their one copy).
    """

    def __init__(self, header: bytes, pieces: Sequence[BinaryPiece]) -> None:
        chunks: list[bytes | memoryview] = [header]
        for piece in pieces:
            if isinstance(piece, bytes):
                if piece:
                    chunks.append(piece)
                continue
            if piece.size == 0:
                continue
            array = piece if piece.flags.c_contiguous else np.ascontiguousarray(piece)
            view = memoryview(array.reshape(-1).view(np.uint8).data)
            for start in range(0, len(view), CHUNK):
                chunks.append(view[start : start + CHUNK])
        self.chunks = chunks
        self.length = sum(len(c) for c in chunks)

    def __iter__(self) -> Iterator[bytes]:
        return iter(cast("list[bytes]", self.chunks))

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield cast(bytes, chunk)


@dataclass(slots=True)
class RequestPlan:
    """What one call sends, and how its answer is read."""

    method: str
    path: str
    content: bytes | BodyStream | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    idempotent: bool = True
    """Whether sending it twice is harmless (retries after it may have been received)."""
    stream_response: bool = False
    """Read the body into a writable buffer (inference answers: zero-copy, writable arrays)."""
    answer_statuses: frozenset[int] = frozenset()
    """Non-2xx statuses that are answers rather than errors (503 from a readiness check)."""
    model: str | None = None
    version: str | None = None


@dataclass(slots=True)
class ResolvedOptions:
    """A call's options with the client's settings filled in."""

    timeout: httpx.Timeout
    max_retries: int
    deadline: float | None
    headers: Mapping[str, str]
    request_id: str


@dataclass(slots=True)
class Answer:
    """A response that passed the status check, with its body read."""

    response: httpx.Response
    content: bytes | bytearray
    request_id: str
    attempts: int
    seconds: float


def model_path(name: str, version: VersionLike, suffix: str = "") -> str:
    """``/v2/models/{name}[/versions/{version}]{suffix}`` with both parts escaped."""
    if not isinstance(name, str) or not name:
        raise InputError("a model name is a non-empty string")
    path = f"/v2/models/{quote(name, safe='')}"
    if version is not None and version != "":
        path += f"/versions/{quote(str(version), safe='')}"
    return path + suffix


def _version_text(version: VersionLike) -> str | None:
    return None if version is None or version == "" else str(version)


def plan_server_metadata() -> RequestPlan:
    return RequestPlan("GET", "/v2")


def plan_openapi() -> RequestPlan:
    return RequestPlan("GET", "/v2/openapi.json")


def plan_health(which: str) -> RequestPlan:
    return RequestPlan("GET", f"/v2/health/{which}", answer_statuses=frozenset({400, 503}))


def plan_model_metadata(name: str, version: VersionLike) -> RequestPlan:
    return RequestPlan("GET", model_path(name, version), model=name, version=_version_text(version))


def plan_model_ready(name: str, version: VersionLike) -> RequestPlan:
    return RequestPlan(
        "GET",
        model_path(name, version, "/ready"),
        answer_statuses=frozenset({400, 503}),
        model=name,
        version=_version_text(version),
    )


def plan_model_config(name: str, version: VersionLike) -> RequestPlan:
    return RequestPlan(
        "GET", model_path(name, version, "/config"), model=name, version=_version_text(version)
    )


def plan_model_stats(name: str | None, version: VersionLike) -> RequestPlan:
    if name is None:
        if version is not None and version != "":
            raise InputError("a version needs a model name")
        return RequestPlan("GET", "/v2/models/stats")
    return RequestPlan(
        "GET", model_path(name, version, "/stats"), model=name, version=_version_text(version)
    )


_JSON_HEADERS = {"Content-Type": "application/json"}


def plan_repository_index(ready: bool) -> RequestPlan:
    body = b'{"ready":true}' if ready else b"{}"
    return RequestPlan("POST", "/v2/repository/index", content=body, headers=_JSON_HEADERS)


def plan_load(name: str, config: Mapping[str, Any] | str | None) -> RequestPlan:
    model_path(name, None)
    body: dict[str, Any] = {}
    if config is not None:
        text = config if isinstance(config, str) else orjson.dumps(config).decode()
        body["parameters"] = {"config": text}
    return RequestPlan(
        "POST",
        f"/v2/repository/models/{quote(name, safe='')}/load",
        content=orjson.dumps(body),
        headers=_JSON_HEADERS,
        idempotent=False,
        model=name,
    )


def plan_unload(name: str) -> RequestPlan:
    model_path(name, None)
    return RequestPlan(
        "POST",
        f"/v2/repository/models/{quote(name, safe='')}/unload",
        content=b"{}",
        headers=_JSON_HEADERS,
        idempotent=False,
        model=name,
    )


# --- errors ----------------------------------------------------------------------------------


def _error_body(content: bytes | bytearray) -> tuple[Any, str | None]:
    """The parsed body and the server's message in it, if any."""
    if not content:
        return None, None
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        text = bytes(content).decode("utf-8", errors="replace").strip()
        return text, text[:2000] or None
    if isinstance(body, dict):
        for key in ("error", "detail", "message"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return body, value
            if value:
                return body, orjson.dumps(value).decode()
    return body, None


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}
"""The error class of each status with one of its own; other 5xx are InternalServerError."""


def make_status_error(
    response: httpx.Response,
    content: bytes | bytearray,
    *,
    request_id: str | None,
    attempts: int,
    model: str | None = None,
    version: str | None = None,
) -> APIStatusError:
    """The :class:`APIStatusError` subclass for a non-2xx answer, carrying the server's message."""
    status = response.status_code
    body, error = _error_body(content)
    reason = response.reason_phrase or "error"
    error = error or reason
    message = f"{status} {reason}: {error}"
    common: dict[str, Any] = {
        "response": response,
        "error": error,
        "body": body,
        "request_id": request_id,
        "attempts": attempts,
    }
    if status == 404 and model is not None:
        return ModelNotFoundError(message, model=model, version=version, **common)
    cls = _STATUS_ERRORS.get(status)
    if cls is None:
        cls = InternalServerError if status >= 500 else APIStatusError
    return cls(message, **common)


def connection_error(
    exc: httpx.TransportError,
    request: httpx.Request,
    *,
    request_id: str,
    attempts: int,
) -> APIConnectionError:
    """The client's error for an httpx transport failure; ``sent`` says whether the server may
    have received the request."""
    unsent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
    detail = str(exc) or type(exc).__name__
    url = f"{request.method} {request.url}"
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(
            f"timed out: {url}: {detail}",
            request=request,
            request_id=request_id,
            attempts=attempts,
            sent=not unsent,
        )
    return APIConnectionError(
        f"connection error: {url}: {detail}",
        request=request,
        request_id=request_id,
        attempts=attempts,
        sent=not unsent,
    )


# --- parsing answers -------------------------------------------------------------------------


def _json(answer: Answer) -> Any:
    if not answer.content:
        return None
    try:
        return orjson.loads(answer.content)
    except orjson.JSONDecodeError as exc:
        raise APIResponseValidationError(
            f"the server's answer is not JSON: {exc}",
            response=answer.response,
            body=bytes(answer.content[:2000]),
            request_id=answer.request_id,
            attempts=answer.attempts,
        ) from None


def parse_model(cls: type[_M]) -> Callable[[Answer], _M]:
    """A parser of answers holding one ``cls`` object."""

    def parse(answer: Answer) -> _M:
        body = _json(answer)
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            raise APIResponseValidationError(
                f"the server's answer is not a valid {cls.__name__}: {exc}",
                response=answer.response,
                body=body,
                request_id=answer.request_id,
                attempts=answer.attempts,
            ) from None

    return parse


def parse_models(answer: Answer) -> RepositoryIndex:
    body = _json(answer)
    if not isinstance(body, list):
        raise APIResponseValidationError(
            "the repository index is not a JSON list",
            response=answer.response,
            body=body,
            request_id=answer.request_id,
            attempts=answer.attempts,
        )
    try:
        return RepositoryIndex(RepositoryModel.model_validate(row) for row in body)
    except ValidationError as exc:
        raise APIResponseValidationError(
            f"the repository index holds an invalid row: {exc}",
            response=answer.response,
            body=body,
            request_id=answer.request_id,
            attempts=answer.attempts,
        ) from None


def parse_flag(model: str | None = None, version: str | None = None) -> Callable[[Answer], bool]:
    """A parser of health and readiness answers: 2xx is ``True``; 503, or a 400 without a
    message (MLServer's "not ready"), is ``False``; any other status raises."""

    def parse(answer: Answer) -> bool:
        status = answer.response.status_code
        if status < 300:
            return True
        if status == 503:
            return False
        _, error = _error_body(answer.content)
        if status == 400 and error is None:
            return False
        raise make_status_error(
            answer.response,
            answer.content,
            request_id=answer.request_id,
            attempts=answer.attempts,
            model=model,
            version=version,
        )

    return parse


def parse_nothing(answer: Answer) -> None:
    return None


def parse_json_object(answer: Answer) -> dict[str, Any]:
    """A parser of answers holding one JSON object, returned as it is."""
    body = _json(answer)
    if not isinstance(body, dict):
        raise APIResponseValidationError(
            "the server's answer is not a JSON object",
            response=answer.response,
            body=body,
            request_id=answer.request_id,
            attempts=answer.attempts,
        )
    return body


parse_server_metadata = parse_model(ServerMetadata)
parse_model_metadata = parse_model(ModelMetadata)
parse_model_config = parse_model(ModelConfiguration)
parse_statistics = parse_model(InferenceStatistics)


@dataclass(frozen=True)
class InferCall:
    """An inference request ready to send, and how to read its answer."""

    plan: RequestPlan

    def parse(self, answer: Answer) -> InferResult:
        header = answer.response.headers.get(HEADER_LENGTH)
        try:
            header_length = int(header) if header is not None else None
            response, arrays = decode_response(answer.content, header_length)
        except (CodecError, ValueError) as exc:
            raise APIResponseValidationError(
                f"the inference response cannot be decoded: {exc}",
                response=answer.response,
                request_id=answer.request_id,
                attempts=answer.attempts,
            ) from None
        outputs = {out.name: from_wire(arrays[out.name], out.datatype) for out in response.outputs}
        request_id = answer.response.headers.get(REQUEST_ID_HEADER, answer.request_id)
        return InferResult(
            response,
            outputs,
            request_id=request_id,
            timing=Timing(answer.seconds, answer.attempts),
        )


# --- the client's settings -------------------------------------------------------------------


class _SharedState:
    """What a client learns from the server, shared with its :meth:`with_options` copies."""

    def __init__(self) -> None:
        self.server_metadata: ServerMetadata | None = None
        self.binary: bool | None = None
        self.model_metadata: dict[tuple[str, str | None], ModelMetadata] = {}
        self.urls: dict[str, httpx.URL] = {}

    def forget_model(self, name: str) -> None:
        for key in [k for k in self.model_metadata if k[0] == name]:
            self.model_metadata.pop(key, None)


def _as_timeout(value: TimeoutLike) -> httpx.Timeout:
    return value if isinstance(value, httpx.Timeout) else httpx.Timeout(value)


def clamp_timeout(timeout: httpx.Timeout, remaining: float) -> httpx.Timeout:
    """``timeout`` with no phase longer than ``remaining`` seconds."""

    def clamp(value: float | None) -> float:
        return remaining if value is None else min(value, remaining)

    return httpx.Timeout(
        connect=clamp(timeout.connect),
        read=clamp(timeout.read),
        write=clamp(timeout.write),
        pool=clamp(timeout.pool),
    )


def binary_supported(metadata: ServerMetadata) -> bool:
    return "binary_tensor_data" in metadata.extensions


def _injected_timeout(http_client: httpx.Client | httpx.AsyncClient | None) -> httpx.Timeout | None:
    """An injected client's own timeout, when it was set to something other than httpx's default."""
    if http_client is None or http_client.timeout == httpx.Timeout(5.0):
        return None
    return http_client.timeout


class BaseClient(Generic[_HttpT]):
    """Settings, caches and request building shared by :class:`Client` and :class:`AsyncClient`.

    ``_HttpT`` is the kind of :class:`httpx.Client` a client may be given (sync or async).
    """

    _server_class: ClassVar[type[Any]]
    """What ``client.server`` is (sync or async calls)."""
    _models_class: ClassVar[type[Any]]
    """What ``client.models`` is."""

    server: Any
    models: Any
    base_url: str
    api_key: str | None
    timeout: httpx.Timeout
    max_retries: int
    deadline: float | None
    binary: bool | None
    validate: bool
    retry_policy: RetryPolicy
    _http: _HttpT | None
    _default_headers: dict[str, str]
    _default_entries: dict[str, tuple[str, str]]
    _state: _SharedState
    _owns_http: bool
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
    ) -> None:
        env = EnvSettings.from_env()
        setup_logging(env.log)
        self._set_endpoints(base_url or env.base_url or DEFAULT_BASE_URL)
        self.api_key = api_key if api_key is not None else env.api_key
        http_timeout = _injected_timeout(http_client)
        if not isinstance(timeout, NotGiven):
            self.timeout = _as_timeout(timeout)
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
        self._state = _SharedState()
        self._build_default_headers()
        self._http = http_client
        self._owns_http = http_client is None
        self._open_transport()
        self._attach_namespaces()

    def _open_transport(self) -> None:
        """Set up the connection pool of a client given no ``http_client`` (sync or async)."""
        raise NotImplementedError

    def _attach_namespaces(self) -> None:
        self.server = self._server_class(self)
        self.models = self._models_class(self)

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
        copy._copy_settings(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            deadline=deadline,
            headers=headers,
            binary=binary,
            validate=validate,
            retry_policy=retry_policy,
        )
        copy._attach_namespaces()
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
        caller's event loop.

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
        self._default_entries = {name.lower(): (name, value) for name, value in default.items()}

    def _copy_settings(
        self,
        *,
        base_url: str | Sequence[str] | Endpoints | None,
        api_key: str | None,
        timeout: TimeoutLike | NotGiven,
        max_retries: int | NotGiven,
        deadline: float | NotGiven | None,
        headers: HeadersLike | None,
        binary: bool | NotGiven | None,
        validate: bool | None,
        retry_policy: RetryPolicy | None,
    ) -> None:
        """Apply :meth:`with_options` overrides to a shallow copy of a client."""
        if base_url is not None:
            endpoints = parse_urls(base_url)
            current = self._pool.settings.urls if self._pool is not None else (self.base_url,)
            if endpoints.urls != current:
                self._set_endpoints(endpoints)
                self._state = _SharedState()
        if api_key is not None:
            self.api_key = api_key
        if not isinstance(timeout, NotGiven):
            self.timeout = _as_timeout(timeout)
        if not isinstance(max_retries, NotGiven):
            if max_retries < 0:
                raise ValueError("max_retries must not be negative")
            self.max_retries = max_retries
        if not isinstance(deadline, NotGiven):
            self.deadline = deadline
        if not isinstance(binary, NotGiven):
            self.binary = binary
        if validate is not None:
            self.validate = validate
        if retry_policy is not None:
            self.retry_policy = retry_policy
        if headers:
            self._custom_headers = {**self._custom_headers, **headers}
        self._owns_http = False
        self._build_default_headers()

    def _resolve(self, options: CallOptions) -> ResolvedOptions:
        timeout = options.get("timeout", NOT_GIVEN)
        max_retries = options.get("max_retries", NOT_GIVEN)
        deadline = options.get("deadline", NOT_GIVEN)
        retries = self.max_retries if isinstance(max_retries, NotGiven) else max_retries
        if retries < 0:
            raise ValueError("max_retries must not be negative")
        return ResolvedOptions(
            timeout=self.timeout if isinstance(timeout, NotGiven) else _as_timeout(timeout),
            max_retries=retries,
            deadline=self.deadline if isinstance(deadline, NotGiven) else deadline,
            headers=options.get("extra_headers") or {},
            request_id=options.get("request_id") or os.urandom(16).hex(),  # as uuid4().hex
        )

    def _url(self, path: str, base_url: str | None = None) -> httpx.URL:
        key = path if base_url is None else base_url + path
        url = self._state.urls.get(key)
        if url is None:
            url = httpx.URL((self.base_url if base_url is None else base_url) + path)
            if len(self._state.urls) < 1024:
                self._state.urls[key] = url
        return url

    def _build_request(
        self,
        plan: RequestPlan,
        options: ResolvedOptions,
        deadline_at: float | None,
        http_client: httpx.Client | httpx.AsyncClient | None,
        base_url: str | None = None,
    ) -> httpx.Request:
        """The request of one attempt, to ``base_url`` (an endpoint of a pool) or the client's."""
        timeout = options.timeout
        if deadline_at is not None:
            remaining = deadline_at - time.monotonic()
            if remaining <= 0:
                raise APITimeoutError(
                    f"the call's deadline of {options.deadline} s passed",
                    request_id=options.request_id,
                    sent=False,
                )
            timeout = clamp_timeout(timeout, remaining)
        entries = dict(self._default_entries)
        if http_client is not None:  # an injected client's default headers, ours over them
            entries = {k.lower(): (k, v) for k, v in http_client.headers.items()} | entries
        for extra in (plan.headers, options.headers):
            for name, value in extra.items():
                entries[name.lower()] = (name, value)
        entries["x-request-id"] = (REQUEST_ID_HEADER, options.request_id)
        url = self._url(plan.path, base_url)
        # Built from a stream, an httpx.Request gets no automatic headers (and is not copied
        # into a second Headers object): Host and Content-Length come from here.
        entries.setdefault("host", ("Host", url.netloc.decode("ascii")))
        content = plan.content
        stream: httpx.SyncByteStream | httpx.AsyncByteStream
        if isinstance(content, BodyStream):
            stream = content
            entries["content-length"] = ("Content-Length", str(content.length))
        else:
            stream = httpx.ByteStream(content or b"")
            if content is not None or plan.method in ("POST", "PUT", "PATCH"):
                entries["content-length"] = ("Content-Length", str(len(content or b"")))
        return httpx.Request(
            plan.method,
            url,
            headers=list(entries.values()),
            stream=stream,
            extensions={"timeout": timeout.as_dict()},
        )

    def _begin_call(self, options: ResolvedOptions) -> tuple[float, float | None, Route | None]:
        """When the call starts (:func:`time.monotonic`), its deadline, and its route over the
        servers of a client of several."""
        start = time.monotonic()
        deadline_at = None if options.deadline is None else start + options.deadline
        route = self._pool.route() if self._pool is not None else None
        return start, deadline_at, route

    def _retry_scope(
        self,
        plan: RequestPlan,
        options: ResolvedOptions,
        deadline_at: float | None,
        route: Route | None,
    ) -> RetryScope:
        return RetryScope(
            max_retries=options.max_retries,
            idempotent=plan.idempotent,
            deadline=deadline_at,
            method=plan.method,
            url=self.base_url + plan.path,
            request_id=options.request_id,
            fail_over=route.fail_over if route is not None else None,
        )

    def _attempt_request(
        self,
        plan: RequestPlan,
        options: ResolvedOptions,
        number: int,
        deadline_at: float | None,
        base_url: str | None,
    ) -> httpx.Request:
        """The request of attempt ``number``, built and logged (a deadline already passed
        raises :class:`APITimeoutError` counting the attempts before it)."""
        try:
            request = self._build_request(plan, options, deadline_at, self._http, base_url)
        except APITimeoutError as exc:
            exc.attempts = number - 1
            raise
        self._log_request(request, number)
        return request

    def _status_error(
        self,
        plan: RequestPlan,
        options: ResolvedOptions,
        number: int,
        response: httpx.Response,
        content: bytes | bytearray,
    ) -> APIStatusError:
        return make_status_error(
            response,
            content,
            request_id=options.request_id,
            attempts=number,
            model=plan.model,
            version=plan.version,
        )

    def _may_retry(self, error: APIError, plan: RequestPlan, options: ResolvedOptions) -> bool:
        """Whether a failed first attempt leads to retries (tenacity decides the rest)."""
        return options.max_retries > 0 and is_retryable(
            error, idempotent=plan.idempotent, statuses=self.retry_policy.retry_statuses
        )

    def _log_request(self, request: httpx.Request, attempt: int) -> None:
        if logger.isEnabledFor(10):  # DEBUG
            from ._logs import redact_headers

            logger.debug(
                "request %s %s (attempt %d) headers=%s",
                request.method,
                request.url,
                attempt,
                redact_headers(request.headers.multi_items()),
            )

    def _log_response(self, request: httpx.Request, response: httpx.Response, start: float) -> None:
        if logger.isEnabledFor(20):  # INFO
            logger.info(
                'HTTP %s %s "%d %s" in %.1f ms',
                request.method,
                request.url,
                response.status_code,
                response.reason_phrase,
                (time.perf_counter() - start) * 1000.0,
            )

    # --- what the client learns from the server ---------------------------------------------

    def _remember_server(self, answer: Answer) -> ServerMetadata:
        """Parse server metadata, remembering whether the server speaks binary tensors."""
        metadata = parse_server_metadata(answer)
        self._state.server_metadata = metadata
        self._state.binary = binary_supported(metadata)
        return metadata

    def _remember_model(self, key: tuple[str, str | None]) -> Callable[[Answer], ModelMetadata]:
        """A parser of model metadata that caches it under ``key`` (model, version)."""

        def parse(answer: Answer) -> ModelMetadata:
            metadata = parse_model_metadata(answer)
            self._state.model_metadata[key] = metadata
            return metadata

        return parse

    # --- inference ---------------------------------------------------------------------------

    def _infer_call(
        self,
        model: str,
        version: VersionLike,
        inputs: Any,
        metadata: ModelMetadata | None,
        *,
        check: bool,
        binary: bool,
        outputs: Sequence[str | Output] | None,
        id: str | None,
        parameters: Mapping[str, Any] | None,
    ) -> InferCall:
        items = collect_inputs(inputs, metadata)
        checked = metadata if check else None
        payloads = prepare_inputs(items, checked, binary=binary)
        wanted = request_outputs(outputs, checked, binary=binary)
        params: dict[str, Any] = dict(parameters) if parameters else {}
        if binary and outputs is None:
            params.setdefault("binary_data_output", True)
        try:
            header, pieces = encode_request_parts(
                payloads, outputs=wanted, request_id=id, parameters=params or None
            )
        except CodecError as exc:
            raise InputError(str(exc)) from None
        content: bytes | BodyStream
        headers: dict[str, str]
        if pieces:
            stream = BodyStream(header, pieces)
            content = b"".join(stream.chunks) if stream.length <= SMALL_BODY else stream
            headers = {
                "Content-Type": "application/octet-stream",
                HEADER_LENGTH: str(len(header)),
            }
        else:
            content = header
            headers = _JSON_HEADERS
        plan = RequestPlan(
            "POST",
            model_path(model, version, "/infer"),
            content=content,
            headers=headers,
            stream_response=True,
            model=model,
            version=_version_text(version),
        )
        return InferCall(plan)


class _LazyVersion:
    def __init__(self) -> None:
        self._value: str | None = None

    def get(self) -> str:
        if self._value is None:
            self._value = client_version()
        return self._value


_VERSION = _LazyVersion()
