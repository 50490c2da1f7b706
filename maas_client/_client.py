"""The clients: :class:`Client` (blocking) and :class:`AsyncClient` (``async``/``await``).

Both share everything in :class:`~maas_client._base.BaseClient`; what differs is only the I/O
loop: sending an attempt, reading its body, and waiting between attempts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from ._base import (
    NO_METADATA_STATUSES,
    Answer,
    BaseClient,
    RequestPlan,
    ResolvedOptions,
    connection_error,
    plan_model_metadata,
    plan_server_metadata,
)
from ._batched import BatchResult, ProgressLike, async_infer_batched, infer_batched
from ._endpoints import (
    Route,
    cancel_probes,
    start_async_probes,
    start_probes,
)
from ._exceptions import (
    APIError,
    APIStatusError,
    BadRequestError,
    NotFoundError,
)
from ._generation import (
    AsyncGenerationStream,
    Generation,
    GenerationStream,
    parse_generation,
    plan_generate,
)
from ._inputs import Output, needs_metadata
from ._resources import (
    AsyncClientWithRawResponse,
    AsyncModels,
    AsyncServer,
    ClientWithRawResponse,
    Models,
    Server,
)
from ._response import RawResponse, raw_response_requested
from ._result import InferResult
from ._retry import async_retrying, sync_retrying
from ._streaming import open_async_stream, open_stream
from ._transport import AsyncLeanTransport, LeanTransport, proxies_configured
from ._types import CallOptions, VersionLike
from .types import ModelMetadata

if TYPE_CHECKING:
    from typing_extensions import Self, Unpack

    from ._generation import GenerateOptions

__all__ = ["AsyncClient", "Client"]

_T = TypeVar("_T")


def _known_length(response: httpx.Response) -> int | None:
    length = response.headers.get("content-length")
    return int(length) if length is not None and length.isdigit() else None


def _internal(options: CallOptions) -> CallOptions:
    """The options of a request made on the way to another (metadata for validation)."""
    inner = options.copy()
    inner.pop("request_id", None)
    return inner


class Client(BaseClient[httpx.Client]):
    """A blocking client of an Open Inference Protocol server (maas, Triton, MLServer, KServe).

    >>> with Client("http://127.0.0.1:8000") as client:  # doctest: +SKIP
    ...     result = client.infer("digits", x)
    ...     result["probabilities"]

    Settings left out come from ``MAAS_BASE_URL``, ``MAAS_API_KEY``, ``MAAS_TIMEOUT`` and
    ``MAAS_MAX_RETRIES``. ``http_client`` injects an :class:`httpx.Client` (proxies, TLS,
    transports); the client then never closes it. Several URLs (a list, or
    :class:`~maas_client.Endpoints`) spread the requests over several servers, and
    :meth:`local` runs a server in-process.
    """

    _server_class = Server
    _models_class = Models
    server: Server
    models: Models
    _transport: httpx.BaseTransport | None

    def _open_transport(self) -> None:
        self._transport = None
        if self._http is None:
            if proxies_configured():
                # httpx mounts the proxies named in the environment in front of the transport.
                self._http = httpx.Client(timeout=self.timeout, transport=LeanTransport())
            else:
                self._transport = LeanTransport()

    def _serve_in_process(self, app: Any) -> None:
        from ._local import attach_local

        attach_local(self, app)

    # --- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool, unless it was injected or belongs to the original client."""
        if self._owns_http:
            if self._http is not None:
                self._http.close()
            if self._transport is not None:
                self._transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client base_url={self.base_url!r}>"

    @cached_property
    def with_raw_response(self) -> ClientWithRawResponse:
        """The same calls, returning a :class:`~maas_client.RawResponse` each."""
        return ClientWithRawResponse(self)

    # --- I/O ---------------------------------------------------------------------------------

    def _call(
        self,
        plan: RequestPlan,
        options: CallOptions,
        parse: Callable[[Answer], _T],
        *,
        primary: bool = True,
    ) -> _T:
        answer = self._send(plan, self._resolve(options))
        if primary and raw_response_requested():
            return RawResponse(answer, parse)  # type: ignore[return-value]
        return parse(answer)

    def _send(self, plan: RequestPlan, options: ResolvedOptions) -> Answer:
        start, deadline_at, route = self._begin_call(options)
        try:
            return self._attempt(plan, options, 1, start, deadline_at, route)
        except APIError as exc:
            if not self._may_retry(exc, plan, options):
                raise
            first_failure = exc
        # The first attempt runs outside tenacity (it costs a few microseconds per call);
        # tenacity takes over from its failure, which it replays as its own attempt 1.
        retrying = sync_retrying(
            self.retry_policy, self._retry_scope(plan, options, deadline_at, route)
        )
        answer: Answer | None = None
        for attempt in retrying:
            with attempt:
                number = attempt.retry_state.attempt_number
                if number == 1:
                    raise first_failure
                answer = self._attempt(plan, options, number, start, deadline_at, route)
        assert answer is not None
        return answer

    def _attempt(
        self,
        plan: RequestPlan,
        options: ResolvedOptions,
        number: int,
        start: float,
        deadline_at: float | None,
        route: Route | None = None,
        *,
        base_url: str | None = None,
    ) -> Answer:
        if route is not None:  # several servers: this attempt goes to one of them
            endpoint = route.acquire()
            start_probes(self)
            try:
                answer = self._attempt(
                    plan, options, number, start, deadline_at, base_url=endpoint.url
                )
            except BaseException as exc:
                route.release(endpoint, exc)
                raise
            route.release(endpoint, None)
            return answer
        request, response, sent_at = self._open_attempt(
            plan, options, number, deadline_at, base_url
        )
        try:
            if response.is_success and plan.stream_response:
                content: bytes | bytearray = _read_sync(response)
            else:
                content = response.read()
        except httpx.TransportError as exc:
            raise connection_error(
                exc, request, request_id=options.request_id, attempts=number
            ) from exc
        finally:
            response.close()
        self._log_response(request, response, sent_at)
        return Answer(response, content, options.request_id, number, time.monotonic() - start)

    def _open_attempt(
        self,
        plan: RequestPlan,
        options: ResolvedOptions,
        number: int,
        deadline_at: float | None,
        base_url: str | None,
    ) -> tuple[httpx.Request, httpx.Response, float]:
        """Send attempt ``number``: the request, its response with the body still to read, and
        when it was sent (:func:`time.perf_counter`). An error status the plan does not take as
        an answer is read and raised; a failed connection raises :class:`APIConnectionError`."""
        request = self._attempt_request(plan, options, number, deadline_at, base_url)
        sent_at = time.perf_counter()
        try:
            if self._transport is not None:
                # No httpx.Client of our own: nothing of its (auth, cookies, redirects, hooks)
                # applies, and skipping it halves the client's per-call CPU on small requests.
                response = self._transport.handle_request(request)
                response.request = request
            else:
                assert self._http is not None
                response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise connection_error(
                exc, request, request_id=options.request_id, attempts=number
            ) from exc
        if response.is_success or response.status_code in plan.answer_statuses:
            return request, response, sent_at
        try:
            content = response.read()
        except httpx.TransportError as exc:
            raise connection_error(
                exc, request, request_id=options.request_id, attempts=number
            ) from exc
        finally:
            response.close()
        self._log_response(request, response, sent_at)
        raise self._status_error(plan, options, number, response, content)

    # --- what the server and models are -------------------------------------------------------

    def _use_binary(self, binary: bool | None, options: CallOptions) -> bool:
        if binary is not None:
            return binary
        if self.binary is not None:
            return self.binary
        known = self._state.binary
        if known is None:
            try:
                self._call(
                    plan_server_metadata(),
                    _internal(options),
                    self._remember_server,
                    primary=False,
                )
            except APIStatusError as exc:
                if exc.status_code not in NO_METADATA_STATUSES:
                    raise
                self._state.binary = False  # a server without GET /v2 speaks JSON only
            known = bool(self._state.binary)
        return known

    def _model_metadata(
        self, model: str, version: VersionLike, options: CallOptions
    ) -> ModelMetadata:
        key = (model, None if version is None else str(version))
        cached = self._state.model_metadata.get(key)
        if cached is not None:
            return cached
        return self._call(
            plan_model_metadata(model, version),
            _internal(options),
            self._remember_model(key),
            primary=False,
        )

    # --- inference ---------------------------------------------------------------------------

    def infer(
        self,
        model: str,
        inputs: Any,
        *,
        version: VersionLike = None,
        outputs: Sequence[str | Output] | None = None,
        binary: bool | None = None,
        validate: bool | None = None,
        id: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        **options: Unpack[CallOptions],
    ) -> InferResult:
        """Run ``model`` on ``inputs`` and return its outputs as numpy arrays.

        ``inputs`` is a bare array or list (models with one input), a ``{name: array}`` mapping
        or a list of :class:`~maas_client.Input`. They are checked against the model's metadata
        (fetched once, cached) unless ``validate=False``. ``binary`` picks the encoding (default:
        binary when the server supports it); ``outputs`` limits what comes back; ``id`` and
        ``parameters`` go into the request as the protocol defines them.
        """
        use_binary = self._use_binary(binary, options)
        check = self.validate if validate is None else validate
        metadata = None
        if check or needs_metadata(inputs):
            metadata = self._model_metadata(model, version, options)
        call = self._infer_call(
            model,
            version,
            inputs,
            metadata,
            check=check,
            binary=use_binary,
            outputs=outputs,
            id=id,
            parameters=parameters,
        )
        try:
            return self._call(call.plan, options, call.parse)
        except (BadRequestError, NotFoundError):
            self._state.forget_model(model)  # the model may have changed under its name
            raise

    def infer_batched(
        self,
        model: str,
        inputs: Any,
        *,
        batch_size: int | None = None,
        concurrency: int = 4,
        progress: ProgressLike = True,
        version: VersionLike = None,
        outputs: Sequence[str | Output] | None = None,
        binary: bool | None = None,
        validate: bool | None = None,
        parameters: Mapping[str, Any] | None = None,
        **options: Unpack[CallOptions],
    ) -> BatchResult:
        """Run ``model`` on many rows: split, sent ``concurrency`` requests at a time, joined.

        ``inputs`` are what :meth:`infer` takes, or a pandas DataFrame, with any number of rows
        (their first dimension). Each request carries at most the model's ``max_batch_size``
        rows, or ``batch_size``. The outputs come back in input order; ``progress`` shows a
        bar (in a notebook or a terminal; ``"always"``: also elsewhere). A request that still
        fails after its retries raises :class:`~maas_client.BatchError` once the others are
        done, carrying their outputs.

        >>> result = client.infer_batched("digits", x, concurrency=8)  # doctest: +SKIP
        """
        return infer_batched(
            self,
            model,
            inputs,
            batch_size=batch_size,
            concurrency=concurrency,
            progress=progress,
            version=version,
            outputs=outputs,
            binary=binary,
            validate=validate,
            parameters=parameters,
            options=options,
        )

    # --- text generation ---------------------------------------------------------------------

    def generate(
        self,
        model: str,
        prompt: str,
        *,
        version: VersionLike = None,
        **params: Unpack[GenerateOptions],
    ) -> Generation:
        """Generate text from ``prompt`` with a text-generation ``model`` (Triton's generate
        extension) and return it whole.

        The keyword arguments are the sampling parameters (``max_tokens``, ``temperature``,
        ``top_k``, ``top_p``, ``seed``, ``stop``; left out: the model's defaults),
        ``return_token_ids``, ``id``, ``parameters`` (anything else the server understands) and
        the call options (``timeout``, ``max_retries``...).

        >>> client.generate("tiny_gpt", "Licensed under the", max_tokens=16).text  # doctest: +SKIP
        """
        plan, options = plan_generate(model, version, prompt, params, stream=False)
        return self._call(plan, options, parse_generation)

    def generate_stream(
        self,
        model: str,
        prompt: str,
        *,
        version: VersionLike = None,
        **params: Unpack[GenerateOptions],
    ) -> GenerationStream:
        """Like :meth:`generate`, as a stream of chunks that arrive while the model runs.

        The call returns once the first chunk has arrived; errors until then are raised here
        and retried like any call. Use it in a ``with`` block; leaving the block, or the loop
        over the chunks, closes the connection and the server stops generating.

        >>> with client.generate_stream("tiny_gpt", "Hello") as stream:  # doctest: +SKIP
        ...     for chunk in stream:
        ...         print(chunk.text, end="", flush=True)
        """
        plan, options = plan_generate(model, version, prompt, params, stream=True)
        return GenerationStream(open_stream(self, plan, options))


class _BodyBuffer:
    """Collects a response body into one writable buffer.

    A body that arrives as one ``bytearray`` of the announced length (the lean transport reads
    it so) is taken as it is; otherwise the chunks are copied once into a buffer of that length.
    """

    def __init__(self, length: int | None) -> None:
        self._length = length
        self._whole: bytearray | None = None
        self._buffer: bytearray | None = None
        self._position = 0

    def add(self, chunk: bytes) -> None:
        if self._whole is None and self._buffer is None:
            if isinstance(chunk, bytearray) and len(chunk) == self._length:
                self._whole = chunk
                return
            self._buffer = bytearray(self._length or 0)
        elif self._whole is not None:
            self._buffer, self._whole = self._whole, None
            self._position = len(self._buffer)
        assert self._buffer is not None
        end = self._position + len(chunk)
        if end <= len(self._buffer):
            self._buffer[self._position : end] = chunk
        else:
            del self._buffer[self._position :]
            self._buffer += chunk
        self._position = end

    def result(self) -> bytearray:
        if self._whole is not None:
            return self._whole
        if self._buffer is None:
            return bytearray()
        del self._buffer[self._position :]
        return self._buffer


def _identity_coded(response: httpx.Response) -> bool:
    coding = response.headers.get("content-encoding")
    return coding is None or coding.strip().lower() in ("", "identity")


def _read_sync(response: httpx.Response) -> bytearray:
    """The body in a writable buffer (outputs decoded from it are writable arrays)."""
    if not _identity_coded(response):
        return bytearray(response.read())
    buffer = _BodyBuffer(_known_length(response))
    stream = response.stream
    assert isinstance(stream, httpx.SyncByteStream)
    for chunk in stream:  # the bytes as they come: no decoder to pass them through
        buffer.add(chunk)
    return buffer.result()


async def _read_async(response: httpx.Response) -> bytearray:
    if not _identity_coded(response):
        return bytearray(await response.aread())
    buffer = _BodyBuffer(_known_length(response))
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    async for chunk in stream:
        buffer.add(chunk)
    return buffer.result()


class AsyncClient(BaseClient[httpx.AsyncClient]):
    """The ``async`` twin of :class:`Client`: the same calls, awaited.

    >>> async with AsyncClient("http://127.0.0.1:8000") as client:  # doctest: +SKIP
    ...     result = await client.infer("digits", x)
    """

    _server_class = AsyncServer
    _models_class = AsyncModels
    server: AsyncServer
    models: AsyncModels
    _transport: httpx.AsyncBaseTransport | None

    def _open_transport(self) -> None:
        self._transport = None
        if self._http is None:
            if proxies_configured():
                self._http = httpx.AsyncClient(timeout=self.timeout, transport=AsyncLeanTransport())
            else:
                self._transport = AsyncLeanTransport()

    def _serve_in_process(self, app: Any) -> None:
        from ._local import attach_local_async

        attach_local_async(self, app)

    # --- lifetime ----------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection pool, unless it was injected or belongs to the original client."""
        if self._owns_http:
            await cancel_probes(self._pool)
            if self._http is not None:
                await self._http.aclose()
            if self._transport is not None:
                await self._transport.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncClient base_url={self.base_url!r}>"

    @cached_property
    def with_raw_response(self) -> AsyncClientWithRawResponse:
        """The same calls, returning a :class:`~maas_client.RawResponse` each."""
        return AsyncClientWithRawResponse(self)

    # --- I/O ---------------------------------------------------------------------------------

    async def _call(
        self,
        plan: RequestPlan,
        options: CallOptions,
        parse: Callable[[Answer], _T],
        *,
        primary: bool = True,
    ) -> _T:
        answer = await self._send(plan, self._resolve(options))
        if primary and raw_response_requested():
            return RawResponse(answer, parse)  # type: ignore[return-value]
        return parse(answer)

    async def _send(self, plan: RequestPlan, options: ResolvedOptions) -> Answer:
        start, deadline_at, route = self._begin_call(options)
        try:
            return await self._attempt(plan, options, 1, start, deadline_at, route)
        except APIError as exc:
            if not self._may_retry(exc, plan, options):
                raise
            first_failure = exc
        retrying = async_retrying(
            self.retry_policy, self._retry_scope(plan, options, deadline_at, route)
        )
        answer: Answer | None = None
        async for attempt in retrying:
            with attempt:
                number = attempt.retry_state.attempt_number
                if number == 1:
                    raise first_failure
                answer = await self._attempt(plan, options, number, start, deadline_at, route)
        assert answer is not None
        return answer

    async def _attempt(
        self,
        plan: RequestPlan,
        options: ResolvedOptions,
        number: int,
        start: float,
        deadline_at: float | None,
        route: Route | None = None,
        *,
        base_url: str | None = None,
    ) -> Answer:
        if route is not None:
            endpoint = route.acquire()
            start_async_probes(self)
            try:
                answer = await self._attempt(
                    plan, options, number, start, deadline_at, base_url=endpoint.url
                )
            except BaseException as exc:
                route.release(endpoint, exc)
                raise
            route.release(endpoint, None)
            return answer
        request, response, sent_at = await self._open_attempt(
            plan, options, number, deadline_at, base_url
        )
        try:
            if response.is_success and plan.stream_response:
                content: bytes | bytearray = await _read_async(response)
            else:
                content = await response.aread()
        except httpx.TransportError as exc:
            raise connection_error(
                exc, request, request_id=options.request_id, attempts=number
            ) from exc
        finally:
            await response.aclose()
        self._log_response(request, response, sent_at)
        return Answer(response, content, options.request_id, number, time.monotonic() - start)

    async def _open_attempt(
        self,
        plan: RequestPlan,
        options: ResolvedOptions,
        number: int,
        deadline_at: float | None,
        base_url: str | None,
    ) -> tuple[httpx.Request, httpx.Response, float]:
        """The ``async`` twin of :meth:`Client._open_attempt`."""
        request = self._attempt_request(plan, options, number, deadline_at, base_url)
        sent_at = time.perf_counter()
        try:
            if self._transport is not None:
                response = await self._transport.handle_async_request(request)
                response.request = request
            else:
                assert self._http is not None
                response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise connection_error(
                exc, request, request_id=options.request_id, attempts=number
            ) from exc
        if response.is_success or response.status_code in plan.answer_statuses:
            return request, response, sent_at
        try:
            content = await response.aread()
        except httpx.TransportError as exc:
            raise connection_error(
                exc, request, request_id=options.request_id, attempts=number
            ) from exc
        finally:
            await response.aclose()
        self._log_response(request, response, sent_at)
        raise self._status_error(plan, options, number, response, content)

    # --- what the server and models are -------------------------------------------------------

    async def _use_binary(self, binary: bool | None, options: CallOptions) -> bool:
        if binary is not None:
            return binary
        if self.binary is not None:
            return self.binary
        known = self._state.binary
        if known is None:
            try:
                await self._call(
                    plan_server_metadata(),
                    _internal(options),
                    self._remember_server,
                    primary=False,
                )
            except APIStatusError as exc:
                if exc.status_code not in NO_METADATA_STATUSES:
                    raise
                self._state.binary = False
            known = bool(self._state.binary)
        return known

    async def _model_metadata(
        self, model: str, version: VersionLike, options: CallOptions
    ) -> ModelMetadata:
        key = (model, None if version is None else str(version))
        cached = self._state.model_metadata.get(key)
        if cached is not None:
            return cached
        return await self._call(
            plan_model_metadata(model, version),
            _internal(options),
            self._remember_model(key),
            primary=False,
        )

    # --- inference ---------------------------------------------------------------------------

    async def infer(
        self,
        model: str,
        inputs: Any,
        *,
        version: VersionLike = None,
        outputs: Sequence[str | Output] | None = None,
        binary: bool | None = None,
        validate: bool | None = None,
        id: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        **options: Unpack[CallOptions],
    ) -> InferResult:
        """Run ``model`` on ``inputs``; see :meth:`Client.infer`."""
        use_binary = await self._use_binary(binary, options)
        check = self.validate if validate is None else validate
        metadata = None
        if check or needs_metadata(inputs):
            metadata = await self._model_metadata(model, version, options)
        call = self._infer_call(
            model,
            version,
            inputs,
            metadata,
            check=check,
            binary=use_binary,
            outputs=outputs,
            id=id,
            parameters=parameters,
        )
        try:
            return await self._call(call.plan, options, call.parse)
        except (BadRequestError, NotFoundError):
            self._state.forget_model(model)
            raise

    async def infer_batched(
        self,
        model: str,
        inputs: Any,
        *,
        batch_size: int | None = None,
        concurrency: int = 4,
        progress: ProgressLike = True,
        version: VersionLike = None,
        outputs: Sequence[str | Output] | None = None,
        binary: bool | None = None,
        validate: bool | None = None,
        parameters: Mapping[str, Any] | None = None,
        **options: Unpack[CallOptions],
    ) -> BatchResult:
        """Run ``model`` on many rows; see :meth:`Client.infer_batched`."""
        return await async_infer_batched(
            self,
            model,
            inputs,
            batch_size=batch_size,
            concurrency=concurrency,
            progress=progress,
            version=version,
            outputs=outputs,
            binary=binary,
            validate=validate,
            parameters=parameters,
            options=options,
        )

    # --- text generation ---------------------------------------------------------------------

    async def generate(
        self,
        model: str,
        prompt: str,
        *,
        version: VersionLike = None,
        **params: Unpack[GenerateOptions],
    ) -> Generation:
        """Generate text from ``prompt`` and return it whole; see :meth:`Client.generate`."""
        plan, options = plan_generate(model, version, prompt, params, stream=False)
        return await self._call(plan, options, parse_generation)

    def generate_stream(
        self,
        model: str,
        prompt: str,
        *,
        version: VersionLike = None,
        **params: Unpack[GenerateOptions],
    ) -> AsyncGenerationStream:
        """A stream of chunks; see :meth:`Client.generate_stream`. Nothing is sent until it is
        used: ``async with client.generate_stream(...) as stream``, or ``await`` it.

        >>> async with client.generate_stream("tiny_gpt", "Hello") as stream:  # doctest: +SKIP
        ...     async for chunk in stream:
        ...         print(chunk.text, end="", flush=True)
        """
        plan, options = plan_generate(model, version, prompt, params, stream=True)
        return AsyncGenerationStream(lambda: open_async_stream(self, plan, options))
