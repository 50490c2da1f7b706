"""The one request pipeline: build -> send one attempt -> map the answer, with one retry loop
around it.

Every call goes through :meth:`AsyncPipeline.call`: its plan is turned into an
:class:`httpx.Request` per attempt (headers, deadline-clamped timeouts), the request hooks run,
the transport sends it, the response hooks run, and the answer is read and mapped (an error
status to its :class:`~maas_client.APIStatusError`, a transport failure to
:class:`~maas_client.APIConnectionError` by one table). Tenacity runs every attempt, the first
included. A stream is the same call whose attempt stops at the first event. With several
servers, each attempt goes to one endpoint of the pool (fail-over wraps the single attempt).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from .._answers import (
    NO_METADATA_STATUSES,
    Answer,
    binary_supported,
    parse_model_metadata,
    parse_server_metadata,
)
from .._body import BodyBuffer, BodyStream, identity_coded, known_length
from .._endpoints import Endpoint, EndpointPool, Route
from .._exceptions import APIError, APIStatusError, APITimeoutError
from .._logs import logger, redact_headers
from .._options import ResolvedOptions, clamp_timeout, resolve_options
from .._plans import (
    REQUEST_ID_HEADER,
    RequestPlan,
    plan_health,
    plan_model_metadata,
    plan_server_metadata,
)
from .._probes import async_cancel_probes, start_async_probes
from .._response import RawResponse, raw_response_requested
from .._retry import RetryPolicy, RetryScope, retry_kwargs
from .._sse import ServerSentEvent, SSEDecoder
from .._status import connection_error, make_status_error
from .._streaming import AsyncStreamStart, is_event_stream, not_an_event_stream, unreadable
from .._types import AsyncAttempt, CallOptions
from ..types import ModelMetadata, ServerMetadata
from ._retrying import AsyncRetryLoop, async_retrying

if TYPE_CHECKING:
    from .._core import ClientCore, EventHooks, SharedState

__all__ = ["AsyncPipeline", "internal", "read_buffer"]

_T = TypeVar("_T")
_A = TypeVar("_A")


async def read_buffer(response: httpx.Response) -> bytearray:
    """The body in a writable buffer (outputs decoded from it are writable arrays)."""
    if not identity_coded(response):
        return bytearray(await response.aread())
    buffer = BodyBuffer(known_length(response))
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    async for chunk in stream:  # the bytes as they come: no decoder to pass them through
        buffer.add(chunk)
    return buffer.result()


class AsyncPipeline:
    """How one client sends: its settings, transport, hooks, caches and endpoint pool."""

    def __init__(
        self,
        settings: ClientCore[Any],
        transport: httpx.AsyncBaseTransport,
        *,
        state: SharedState,
        pool: EndpointPool | None,
        default_headers: Mapping[str, str],
        base_headers: Mapping[str, str] | None = None,
        hooks: EventHooks | None = None,
        owns_transport: bool = True,
    ) -> None:
        self.settings = settings
        self.transport = transport
        self.state = state
        self.pool = pool
        self.base_headers = dict(base_headers or {})
        entries = {name.lower(): (name, value) for name, value in self.base_headers.items()}
        for name, value in default_headers.items():
            entries[name.lower()] = (name, value)
        self.default_entries = entries
        hooks = hooks or {}
        self.hooks = hooks
        self.request_hooks = list(hooks.get("request", ()))
        self.response_hooks = list(hooks.get("response", ()))
        self.owns_transport = owns_transport
        self.closed = False
        self.retry_loops: dict[tuple[int, bool], tuple[RetryPolicy, AsyncRetryLoop]] = {}

    def derive(
        self,
        settings: ClientCore[Any],
        *,
        state: SharedState,
        pool: EndpointPool | None,
        default_headers: Mapping[str, str],
    ) -> AsyncPipeline:
        """The pipeline of a :meth:`with_options` copy: the same transport, not owned."""
        return AsyncPipeline(
            settings,
            self.transport,
            state=state,
            pool=pool,
            default_headers=default_headers,
            base_headers=self.base_headers,
            hooks=self.hooks,
            owns_transport=False,
        )

    def use_transport(self, transport: httpx.AsyncBaseTransport) -> None:
        """Send through ``transport`` from now on (embedded mode); the pipeline owns it."""
        self.transport = transport
        self.owns_transport = True

    async def close(self) -> None:
        """Close the transport, unless it was injected or belongs to the original client."""
        if self.owns_transport and not self.closed:
            self.closed = True
            await async_cancel_probes(self.pool)
            await self.transport.aclose()

    # --- build ---------------------------------------------------------------------------------

    def resolve(self, options: CallOptions) -> ResolvedOptions:
        settings = self.settings
        return resolve_options(options, settings.timeout, settings.max_retries, settings.deadline)

    def url(self, path: str, base_url: str | None = None) -> httpx.URL:
        key = path if base_url is None else base_url + path
        urls = self.state.urls
        url = urls.get(key)
        if url is None:
            url = httpx.URL((self.settings.base_url if base_url is None else base_url) + path)
            if len(urls) < 1024:
                urls[key] = url
        return url

    def build_request(
        self,
        plan: RequestPlan,
        options: ResolvedOptions,
        deadline_at: float | None,
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
        entries = dict(self.default_entries)
        for extra in (plan.headers, options.headers):
            for name, value in extra.items():
                entries[name.lower()] = (name, value)
        entries["x-request-id"] = (REQUEST_ID_HEADER, options.request_id)
        url = self.url(plan.path, base_url)
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

    # --- send one attempt ----------------------------------------------------------------------

    async def open(
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
        try:
            request = self.build_request(plan, options, deadline_at, base_url)
        except APITimeoutError as exc:
            exc.attempts = number - 1
            raise
        if logger.isEnabledFor(10):  # DEBUG
            logger.debug(
                "request %s %s (attempt %d) headers=%s",
                request.method,
                request.url,
                number,
                redact_headers(request.headers.multi_items()),
            )
        for hook in self.request_hooks:
            await hook(request)
        sent_at = time.perf_counter()
        try:
            response = await self.transport.handle_async_request(request)
        except httpx.TransportError as exc:
            raise connection_error(
                exc, request, request_id=options.request_id, attempts=number
            ) from exc
        response.request = request
        try:
            for hook in self.response_hooks:
                await hook(response)
        except BaseException:
            await response.aclose()
            raise
        if response.is_success or response.status_code in plan.answer_statuses:
            return request, response, sent_at
        content = await self.read(request, response, options, number, sent_at, False)
        raise make_status_error(
            response,
            content,
            request_id=options.request_id,
            attempts=number,
            model=plan.model,
            version=plan.version,
        )

    async def read(
        self,
        request: httpx.Request,
        response: httpx.Response,
        options: ResolvedOptions,
        number: int,
        sent_at: float,
        into_buffer: bool,
    ) -> bytes | bytearray:
        """The body of ``response``, read and closed (``into_buffer``: a writable buffer)."""
        try:
            if into_buffer:
                content: bytes | bytearray = await read_buffer(response)
            else:
                content = await response.aread()
        except httpx.TransportError as exc:
            raise connection_error(
                exc, request, request_id=options.request_id, attempts=number
            ) from exc
        finally:
            await response.aclose()
        self.log_response(request, response, sent_at)
        return content

    def log_response(self, request: httpx.Request, response: httpx.Response, start: float) -> None:
        if logger.isEnabledFor(20):  # INFO
            logger.info(
                'HTTP %s %s "%d %s" in %.1f ms',
                request.method,
                request.url,
                response.status_code,
                response.reason_phrase,
                (time.perf_counter() - start) * 1000.0,
            )

    async def answer(
        self,
        plan: RequestPlan,
        options: ResolvedOptions,
        number: int,
        start: float,
        deadline_at: float | None,
        base_url: str | None,
    ) -> Answer:
        """One attempt of a call, its answer read."""
        request, response, sent_at = await self.open(plan, options, number, deadline_at, base_url)
        into_buffer = plan.stream_response and response.is_success
        content = await self.read(request, response, options, number, sent_at, into_buffer)
        return Answer(response, content, options.request_id, number, time.monotonic() - start)

    async def first_event(
        self,
        plan: RequestPlan,
        options: ResolvedOptions,
        number: int,
        start: float,
        deadline_at: float | None,
        base_url: str | None,
    ) -> AsyncStreamStart:
        """One attempt of a stream: sent, and read up to its first event."""
        request, response, sent_at = await self.open(plan, options, number, deadline_at, base_url)
        try:
            self.log_response(request, response, sent_at)
            if not is_event_stream(response):
                raise not_an_event_stream(response, options.request_id, number)
            chunks = response.aiter_bytes()
            decoder = SSEDecoder()
            events: list[ServerSentEvent] = []
            ended = False
            while not events and not ended:
                chunk = await anext(chunks, None)
                if chunk is None:
                    ended = True
                else:
                    events = decoder.feed(chunk)
        except httpx.TransportError as exc:
            await response.aclose()
            raise connection_error(
                exc, request, request_id=options.request_id, attempts=number
            ) from exc
        except ValueError as exc:
            await response.aclose()
            raise unreadable(response, exc, options.request_id, number) from None
        except BaseException:
            await response.aclose()
            raise
        return AsyncStreamStart(
            response, decoder, events, ended, options.request_id, number, start, chunks
        )

    # --- the retry loop ------------------------------------------------------------------------

    def retrying(
        self,
        plan: RequestPlan,
        options: ResolvedOptions,
        deadline_at: float | None,
        route: Route | None,
    ) -> AsyncRetryLoop:
        """Tenacity's loop for one call (its settings kept for calls without a deadline or
        several servers: most calls build nothing but the loop)."""
        policy = self.settings.retry_policy
        if deadline_at is None and route is None:
            key = (options.max_retries, plan.idempotent)
            kept = self.retry_loops.get(key)
            if kept is None or kept[0] is not policy:
                kept = (policy, async_retrying(policy, retry_kwargs(policy, RetryScope(*key))))
                self.retry_loops[key] = kept
            return kept[1].fresh()
        scope = RetryScope(
            options.max_retries,
            plan.idempotent,
            deadline_at,
            route.fail_over if route is not None else None,
        )
        return async_retrying(policy, retry_kwargs(policy, scope))

    async def send(self, plan: RequestPlan, options: ResolvedOptions) -> Answer:
        """Every attempt of a call, in one tenacity loop, until one is answered."""
        return await self.attempts(plan, options, self.answer, _release_now)

    async def open_stream(self, plan: RequestPlan, options: CallOptions) -> AsyncStreamStart:
        """Send ``plan`` and read up to its first event, retrying as any call is retried (a
        client of several servers counts the stream on its endpoint until it is closed)."""
        return await self.attempts(plan, self.resolve(options), self.first_event, _release_later)

    async def attempts(
        self,
        plan: RequestPlan,
        options: ResolvedOptions,
        attempt_once: AsyncAttempt[_A],
        answered: Callable[[_A, Route, Endpoint], None],
    ) -> _A:
        """``attempt_once(plan, options, number, start, deadline_at, url)`` in one tenacity
        loop until one succeeds. With several servers each attempt takes one endpoint, given
        back with its failure, or by ``answered`` once it succeeded."""
        start = time.monotonic()
        deadline_at = None if options.deadline is None else start + options.deadline
        pool = self.pool
        route = pool.route() if pool is not None else None
        async for attempt in self.retrying(plan, options, deadline_at, route):
            # An answer returns at once; a failure goes to tenacity, which raises it or retries.
            number = attempt.retry_state.attempt_number
            try:
                if route is None:
                    return await attempt_once(plan, options, number, start, deadline_at, None)
                endpoint = self.acquire(route)
                try:
                    result = await attempt_once(
                        plan, options, number, start, deadline_at, endpoint.url
                    )
                except BaseException as exc:
                    route.release(endpoint, exc)
                    raise
                answered(result, route, endpoint)
                return result
            except Exception:
                with attempt:
                    raise
        raise AssertionError("tenacity ended without an outcome")  # pragma: no cover

    async def call(
        self,
        plan: RequestPlan,
        options: CallOptions,
        parse: Callable[[Answer], _T],
        *,
        primary: bool = True,
    ) -> _T:
        """Send ``plan`` and parse its answer (a :class:`RawResponse` when the call was made
        through ``with_raw_response``; ``primary=False``: a call made on the way to another)."""
        answer = await self.send(plan, self.resolve(options))
        if primary and raw_response_requested():
            return RawResponse(answer, parse)  # type: ignore[return-value]
        return parse(answer)

    # --- several servers -----------------------------------------------------------------------

    def acquire(self, route: Route) -> Endpoint:
        """The endpoint of the next attempt; ejected endpoints that are due get probed."""
        endpoint = route.acquire()
        start_async_probes(route.pool, self.probe)
        return endpoint

    async def probe(self, endpoint: Endpoint) -> None:
        """``GET /v2/health/ready`` on an ejected endpoint: 200 takes it back."""
        pool = self.pool
        assert pool is not None
        ready = False
        try:
            options = self.resolve({"timeout": pool.settings.probe_timeout, "max_retries": 0})
            answer = await self.answer(
                plan_health("ready"), options, 1, time.monotonic(), None, endpoint.url
            )
            ready = answer.response.status_code == 200
        except Exception:  # any failure means "not back yet"
            ready = False
        finally:
            pool.probed(endpoint, ready)

    # --- what the client learns from the server ------------------------------------------------

    def remember_server(self, answer: Answer) -> ServerMetadata:
        """Parse server metadata, remembering whether the server speaks binary tensors."""
        metadata = parse_server_metadata(answer)
        self.state.server_metadata = metadata
        self.state.binary = binary_supported(metadata)
        return metadata

    def remember_model(self, key: tuple[str, str | None]) -> Callable[[Answer], ModelMetadata]:
        """A parser of model metadata that caches it under ``key`` (model, version)."""

        def parse(answer: Answer) -> ModelMetadata:
            metadata = parse_model_metadata(answer)
            self.state.model_metadata[key] = metadata
            return metadata

        return parse

    async def use_binary(self, binary: bool | None, options: CallOptions) -> bool:
        """Whether a call sends binary tensors: as asked, else the client's setting, else what
        the server's metadata says (fetched once; a server without ``GET /v2`` speaks JSON)."""
        if binary is not None:
            return binary
        if self.settings.binary is not None:
            return self.settings.binary
        known = self.state.binary
        if known is None:
            try:
                await self.call(
                    plan_server_metadata(), internal(options), self.remember_server, primary=False
                )
            except APIStatusError as exc:
                if exc.status_code not in NO_METADATA_STATUSES:
                    raise
                self.state.binary = False  # a server without GET /v2 speaks JSON only
            known = bool(self.state.binary)
        return known

    async def model_exists(
        self, model: str, version: str | int | None, options: CallOptions
    ) -> bool:
        """Whether the server knows ``model`` (its metadata answers)."""
        once = options.copy()
        once["max_retries"] = 0
        try:
            await self.model_metadata(model, version, once)
        except APIError:
            return False
        return True

    async def model_metadata(
        self, model: str, version: str | int | None, options: CallOptions
    ) -> ModelMetadata:
        """The model's metadata, fetched once and cached."""
        key = (model, None if version is None else str(version))
        cached = self.state.model_metadata.get(key)
        if cached is not None:
            return cached
        return await self.call(
            plan_model_metadata(model, version),
            internal(options),
            self.remember_model(key),
            primary=False,
        )


def internal(options: CallOptions) -> CallOptions:
    """The options of a request made on the way to another (metadata for validation)."""
    inner = options.copy()
    inner.pop("request_id", None)
    return inner


def _release_now(answer: Answer, route: Route, endpoint: Endpoint) -> None:
    """A call's endpoint is free once its answer is read."""
    route.release(endpoint, None)


def _release_later(opened: AsyncStreamStart, route: Route, endpoint: Endpoint) -> None:
    """A stream holds its endpoint until it is closed."""

    def release(error: BaseException | None) -> None:
        route.release(endpoint, error)

    opened.release = release
