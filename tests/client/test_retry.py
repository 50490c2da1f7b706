"""Retries: which failures are retried, how long the client waits, and what it sends each time.

Waits are recorded by the policy's injected sleep (``delays``) instead of slept, so the computed
delays are asserted exactly; the server's answers come from a respx router.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time

import httpx
import pytest
import respx

from maas_client import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    RetryEvent,
    RetryPolicy,
    ServiceUnavailableError,
    UnprocessableEntityError,
)
from maas_client._exceptions import APIError
from maas_client._retry import (
    backoff_delay,
    is_retryable,
    next_delay,
    retry_after_seconds,
)
from tests.client.conftest import AsyncClientFactory, ClientFactory, Delays

METADATA = {"name": "m", "versions": ["1"], "platform": "", "inputs": [], "outputs": []}


def _status(code: int, **headers: str) -> httpx.Response:
    return httpx.Response(code, json={"error": f"status {code}"}, headers=headers)


# --- Retry-After and back-off, without I/O -----------------------------------------------------


def test_retry_after_forms() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 7, usegmt=True)
    assert retry_after_seconds(httpx.Headers({"retry-after": "3"})) == 3.0
    assert retry_after_seconds(httpx.Headers({"retry-after": "1.5"})) == 1.5
    assert retry_after_seconds(httpx.Headers({"retry-after": date}), now=now) == 7.0
    assert retry_after_seconds(httpx.Headers({"retry-after-ms": "250"})) == 0.25
    # retry-after-ms is more precise and wins over Retry-After
    both = httpx.Headers({"retry-after": "1", "retry-after-ms": "400"})
    assert retry_after_seconds(both) == 0.4
    past = email.utils.formatdate(now - 60, usegmt=True)
    assert retry_after_seconds(httpx.Headers({"retry-after": past}), now=now) == 0.0
    assert retry_after_seconds(httpx.Headers({"retry-after": "-4"})) == 0.0
    assert retry_after_seconds(httpx.Headers({"retry-after": "soon"})) is None
    assert retry_after_seconds(httpx.Headers({})) is None


def test_backoff_bounds() -> None:
    policy = RetryPolicy(jitter=0.25, random=lambda: 0.0)
    assert [backoff_delay(policy, n) for n in range(7)] == [0.5, 1, 2, 4, 8, 8, 8]
    most_jitter = RetryPolicy(jitter=0.25, random=lambda: 1.0)
    assert [backoff_delay(most_jitter, n) for n in range(5)] == [0.375, 0.75, 1.5, 3, 6]
    real = RetryPolicy()
    for n in range(6):
        delay = backoff_delay(real, n)
        ceiling = min(0.5 * 2**n, 8.0)
        assert 0.75 * ceiling <= delay <= ceiling


def test_next_delay_prefers_the_servers_wish_up_to_a_cap() -> None:
    request = httpx.Request("GET", "http://x/")
    policy = RetryPolicy(jitter=0.0, max_retry_after=60.0)

    def error(**headers: str) -> APIStatusError:
        response = httpx.Response(503, headers=headers, request=request)
        return ServiceUnavailableError("503", response=response, error="busy")

    assert next_delay(policy, error(**{"Retry-After": "5"}), 0) == 5.0
    assert next_delay(policy, error(**{"Retry-After": "3600"}), 0) == 60.0
    assert next_delay(policy, error(), 2) == 2.0
    assert next_delay(policy, APIConnectionError(), 1) == 1.0


def test_is_retryable_matrix() -> None:
    request = httpx.Request("POST", "http://x/")

    def status(code: int) -> APIStatusError:
        return APIStatusError(str(code), response=httpx.Response(code, request=request), error="")

    statuses = RetryPolicy().retry_statuses
    for code in (408, 429, 500, 502, 503, 504):
        assert is_retryable(status(code), idempotent=True, statuses=statuses)
    for code in (400, 401, 403, 404, 409, 413, 422, 501):
        assert not is_retryable(status(code), idempotent=True, statuses=statuses)
    # not idempotent: only when the server cannot have acted on the request
    assert [
        code
        for code in (408, 429, 500, 502, 503, 504)
        if is_retryable(status(code), idempotent=False, statuses=statuses)
    ] == [408, 429, 503]
    unsent = APIConnectionError(sent=False)
    sent = APIConnectionError(sent=True)
    assert is_retryable(unsent, idempotent=False, statuses=statuses)
    assert not is_retryable(sent, idempotent=False, statuses=statuses)
    assert is_retryable(sent, idempotent=True, statuses=statuses)
    assert not is_retryable(ValueError(), idempotent=True, statuses=statuses)


# --- which answers are retried -----------------------------------------------------------------


@pytest.mark.parametrize("code", [408, 429, 500, 502, 503, 504])
def test_retried_statuses(
    code: int, router: respx.Router, routed_client: ClientFactory, delays: Delays
) -> None:
    route = router.get("/v2/models/m").mock(
        side_effect=[_status(code), _status(code), httpx.Response(200, json=METADATA)]
    )
    assert routed_client().models.get("m").name == "m"
    assert route.call_count == 3
    assert delays == [0.5, 1.0]


@pytest.mark.parametrize(
    ("code", "error_class"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (413, PayloadTooLargeError),
        (422, UnprocessableEntityError),
        (501, InternalServerError),
    ],
)
def test_not_retried_statuses(
    code: int,
    error_class: type[APIStatusError],
    router: respx.Router,
    routed_client: ClientFactory,
    delays: Delays,
) -> None:
    route = router.get("/v2/health/live").mock(return_value=_status(code))
    with pytest.raises(error_class) as info:
        routed_client().server.live()
    assert route.call_count == 1 and delays == []
    assert info.value.status_code == code and info.value.attempts == 1
    assert info.value.error == f"status {code}"


def test_gives_up_after_max_retries(
    router: respx.Router, routed_client: ClientFactory, delays: Delays
) -> None:
    route = router.get("/v2/models/m").mock(return_value=_status(503))
    with pytest.raises(ServiceUnavailableError) as info:
        routed_client().models.get("m")
    assert route.call_count == 3 and delays == [0.5, 1.0]
    assert info.value.attempts == 3 and "(after 3 attempts)" in str(info.value)


async def test_retried_statuses_async(
    router: respx.Router, routed_async_client: AsyncClientFactory, delays: Delays
) -> None:
    route = router.get("/v2/models/m").mock(
        side_effect=[_status(502), _status(429), httpx.Response(200, json=METADATA)]
    )
    assert (await routed_async_client().models.get("m")).name == "m"
    assert route.call_count == 3 and delays == [0.5, 1.0]
    route.side_effect = None
    route.return_value = _status(400)
    with pytest.raises(BadRequestError):
        await routed_async_client().models.get("m")
    assert route.call_count == 4


def test_connection_errors_and_timeouts_are_retried(
    router: respx.Router, routed_client: ClientFactory, delays: Delays
) -> None:
    route = router.get("/v2/models/m").mock(
        side_effect=[
            httpx.ConnectError("refused"),
            httpx.ReadTimeout("slow"),
            httpx.Response(200, json=METADATA),
        ]
    )
    assert routed_client().models.get("m").name == "m"
    assert route.call_count == 3 and delays == [0.5, 1.0]

    route.side_effect = httpx.ReadTimeout("slow")
    with pytest.raises(APITimeoutError) as info:
        routed_client().models.get("m")
    assert info.value.attempts == 3 and info.value.sent is True
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)

    route.side_effect = httpx.ConnectTimeout("no route")
    with pytest.raises(APITimeoutError) as connect:
        routed_client(max_retries=0).models.get("m")
    assert connect.value.sent is False


# --- Retry-After -------------------------------------------------------------------------------


def test_retry_after_is_honoured(
    router: respx.Router, routed_client: ClientFactory, delays: Delays
) -> None:
    in_three = email.utils.formatdate(time.time() + 3, usegmt=True)
    router.get("/v2/models/m").mock(
        side_effect=[
            _status(429, **{"Retry-After": "2"}),
            _status(503, **{"Retry-After": in_three}),
            _status(503, **{"retry-after-ms": "1250"}),
            _status(503, **{"Retry-After": "86400"}),
            httpx.Response(200, json=METADATA),
        ]
    )
    routed_client(max_retries=4).models.get("m")
    assert delays[0] == 2.0
    assert 1.5 <= delays[1] <= 3.0  # an HTTP date has whole seconds
    assert delays[2] == 1.25
    assert delays[3] == 60.0  # capped at RetryPolicy.max_retry_after


async def test_retry_after_is_honoured_async(
    router: respx.Router, routed_async_client: AsyncClientFactory, delays: Delays
) -> None:
    router.get("/v2/models/m").mock(
        side_effect=[
            _status(429, **{"retry-after-ms": "10"}),
            _status(503, **{"Retry-After": "1"}),
            httpx.Response(200, json=METADATA),
        ]
    )
    await routed_async_client().models.get("m")
    assert delays == [0.01, 1.0]


# --- max_retries, request ids, hooks and logs --------------------------------------------------


def test_max_retries_per_client_and_per_call(
    router: respx.Router, routed_client: ClientFactory, delays: Delays
) -> None:
    route = router.get("/v2/models/m").mock(return_value=_status(500))
    client = routed_client(max_retries=1)
    for max_retries, expected in ((None, 2), (0, 1), (4, 5)):
        before = route.call_count
        with pytest.raises(InternalServerError) as info:
            if max_retries is None:
                client.models.get("m")
            else:
                client.models.get("m", max_retries=max_retries)
        assert route.call_count - before == expected
        assert info.value.attempts == expected
    before = route.call_count
    with pytest.raises(InternalServerError):
        client.with_options(max_retries=2).models.get("m")
    assert route.call_count - before == 3


def test_request_id_is_the_same_on_every_attempt(
    router: respx.Router, routed_client: ClientFactory
) -> None:
    route = router.get("/v2/models/m").mock(
        side_effect=[_status(503), _status(503), httpx.Response(200, json=METADATA)]
    )
    client = routed_client()
    client.models.get("m")
    ids = {call.request.headers["x-request-id"] for call in route.calls}
    assert len(ids) == 1 and len(ids.pop()) == 32

    route.side_effect = [_status(503), httpx.Response(200, json=METADATA)]
    client.models.get("m", request_id="my-id")
    assert [c.request.headers["x-request-id"] for c in route.calls[3:]] == ["my-id", "my-id"]

    route.side_effect = None
    route.return_value = httpx.Response(200, json=METADATA)
    client.models.get("m")
    client.models.get("m")
    assert (
        route.calls[-1].request.headers["x-request-id"]
        != (route.calls[-2].request.headers["x-request-id"])
    )


def test_infer_body_is_resent_on_retry(router: respx.Router, routed_client: ClientFactory) -> None:
    import numpy as np

    route = router.post("/v2/models/m/infer").mock(
        side_effect=[
            _status(503),
            httpx.Response(
                200,
                json={
                    "model_name": "m",
                    "outputs": [{"name": "y", "datatype": "FP32", "shape": [1], "data": [1.0]}],
                },
            ),
        ]
    )
    big = np.arange(100_000, dtype=np.float32)  # streamed from the array, not joined
    result = routed_client().infer("m", {"x": big}, validate=False)
    assert result["y"].tolist() == [1.0] and result.timing.attempts == 2
    bodies = [call.request.read() for call in route.calls]
    assert bodies[0] == bodies[1] and bodies[0].endswith(big.tobytes())


def test_retry_hook_and_log_line(
    router: respx.Router,
    routed_client: ClientFactory,
    delays: Delays,
    caplog: pytest.LogCaptureFixture,
) -> None:
    router.get("/v2/models/m").mock(
        side_effect=[_status(503), httpx.ConnectError("down"), httpx.Response(200, json=METADATA)]
    )
    events: list[RetryEvent] = []
    policy = RetryPolicy(jitter=0.0, sleep=delays.sleep, on_retry=events.append)
    with caplog.at_level(logging.INFO, logger="maas_client"):
        routed_client(retry_policy=policy).models.get("m", request_id="rid")
    assert [(e.attempt, e.delay, e.method, e.request_id) for e in events] == [
        (1, 0.5, "GET", "rid"),
        (2, 1.0, "GET", "rid"),
    ]
    assert isinstance(events[0].error, ServiceUnavailableError)
    assert isinstance(events[1].error, APIConnectionError)
    assert events[0].url == "http://maas.test/v2/models/m"
    lines = [r.getMessage() for r in caplog.records if r.name == "maas_client"]
    retry_lines = [line for line in lines if line.startswith("retrying")]
    assert retry_lines[0].startswith(
        "retrying GET http://maas.test/v2/models/m in 0.50 s (attempt 1 of 3 failed: 503"
    )
    assert "[request id rid]" in retry_lines[0] and len(retry_lines) == 2


# --- deadlines and timeouts --------------------------------------------------------------------


def test_deadline_stops_waits_that_would_overrun_it(
    router: respx.Router, routed_client: ClientFactory, delays: Delays
) -> None:
    route = router.get("/v2/models/m").mock(return_value=_status(503, **{"Retry-After": "30"}))
    started = time.monotonic()
    with pytest.raises(ServiceUnavailableError) as info:
        routed_client(max_retries=5).models.get("m", deadline=5.0)
    assert time.monotonic() - started < 1.0
    assert route.call_count == 1 and delays == [] and info.value.attempts == 1


def test_deadline_bounds_real_retries(router: respx.Router, routed_client: ClientFactory) -> None:
    route = router.get("/v2/models/m").mock(return_value=_status(500))
    # Really sleeps; the waits are long enough that a busy machine's slower attempts (up to
    # ~0.4 s each) do not change the count.
    policy = RetryPolicy(initial_delay=0.5, max_delay=0.5, jitter=0.0)
    started = time.monotonic()
    with pytest.raises(InternalServerError):
        routed_client(retry_policy=policy, max_retries=50).models.get("m", deadline=1.75)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 1.75 + 0.5
    # attempts start at about 0, 0.5, 1.0 (and 1.5) s; none once its wait would pass the deadline
    assert 3 <= route.call_count <= 4


async def test_deadline_async(
    router: respx.Router, routed_async_client: AsyncClientFactory
) -> None:
    router.get("/v2/models/m").mock(return_value=_status(500))
    policy = RetryPolicy(initial_delay=0.25, max_delay=0.25, jitter=0.0)  # really sleeps
    started = time.monotonic()
    with pytest.raises(InternalServerError) as info:
        await routed_async_client(retry_policy=policy, max_retries=50).models.get("m", deadline=1.0)
    assert time.monotonic() - started < 1.5
    assert 3 <= info.value.attempts <= 5


def test_timeouts_per_client_per_call_and_under_a_deadline(
    router: respx.Router, routed_client: ClientFactory
) -> None:
    route = router.get("/v2/models/m").mock(return_value=httpx.Response(200, json=METADATA))
    client = routed_client(timeout=httpx.Timeout(20.0, connect=2.0))
    client.models.get("m")
    client.models.get("m", timeout=1.5)
    client.models.get("m", timeout=httpx.Timeout(None, read=4.0))
    client.models.get("m", deadline=0.5)
    client.with_options(timeout=7.0).models.get("m")
    sent = [call.request.extensions["timeout"] for call in route.calls]
    assert sent[0] == {"connect": 2.0, "read": 20.0, "write": 20.0, "pool": 20.0}
    assert sent[1] == {"connect": 1.5, "read": 1.5, "write": 1.5, "pool": 1.5}
    assert sent[2] == {"connect": None, "read": 4.0, "write": None, "pool": None}
    assert all(0 < value <= 0.5 for value in sent[3].values())
    assert sent[4]["read"] == 7.0


# --- calls that are not idempotent -------------------------------------------------------------


@pytest.mark.parametrize(
    ("answers", "calls", "outcome"),
    [
        ([_status(500)], 1, InternalServerError),
        ([_status(502)], 1, InternalServerError),
        ([httpx.ReadError("reset")], 1, APIConnectionError),
        ([_status(503), httpx.Response(200, json={})], 2, None),
        ([_status(429), httpx.Response(200, json={})], 2, None),
        ([httpx.ConnectError("refused"), httpx.Response(200)], 2, None),
    ],
    ids=["500", "502", "reset-after-send", "503", "429", "connect-error"],
)
def test_load_is_retried_only_when_safe(
    answers: list[httpx.Response | Exception],
    calls: int,
    outcome: type[APIError] | None,
    router: respx.Router,
    routed_client: ClientFactory,
) -> None:
    route = router.post("/v2/repository/models/m/load").mock(side_effect=answers)
    client = routed_client()
    if outcome is None:
        assert client.models.load("m") is None
    else:
        with pytest.raises(outcome):
            client.models.load("m")
    assert route.call_count == calls


async def test_unload_is_retried_only_when_safe_async(
    router: respx.Router, routed_async_client: AsyncClientFactory
) -> None:
    route = router.post("/v2/repository/models/m/unload").mock(
        side_effect=[httpx.ConnectError("refused"), _status(500)]
    )
    with pytest.raises(InternalServerError):
        await routed_async_client().models.unload("m")
    assert route.call_count == 2


def test_rate_limit_error_class(router: respx.Router, routed_client: ClientFactory) -> None:
    router.get("/v2/models/m").mock(return_value=_status(429, **{"Retry-After": "0"}))
    with pytest.raises(RateLimitError) as info:
        routed_client().models.get("m")
    assert info.value.attempts == 3


# --- Retry-After values that are not a wait (issue 11) -----------------------------------------


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e999", "-5"])
def test_unreadable_retry_after_ms_is_ignored(value: str) -> None:
    assert retry_after_seconds(httpx.Headers({"retry-after-ms": value})) is None
    # then Retry-After (if any) is read, as if retry-after-ms were absent
    both = httpx.Headers({"retry-after-ms": value, "retry-after": "2"})
    assert retry_after_seconds(both) == 2.0


@pytest.mark.parametrize("value", ["nan", "inf", "1e999"])
def test_unreadable_retry_after_is_ignored(value: str) -> None:
    assert retry_after_seconds(httpx.Headers({"retry-after": value})) is None


def test_absurd_retry_after_is_capped() -> None:
    policy = RetryPolicy(jitter=0.0, max_retry_after=60.0)
    request = httpx.Request("GET", "http://maas.test/v2")
    huge = httpx.Response(503, headers={"retry-after-ms": "1e300"}, request=request)
    error = ServiceUnavailableError("busy", response=huge, error="busy")
    assert next_delay(policy, error, 0) == 60.0
    nan = httpx.Response(503, headers={"retry-after-ms": "nan"}, request=request)
    error = ServiceUnavailableError("busy", response=nan, error="busy")
    assert next_delay(policy, error, 0) == policy.initial_delay  # back-off instead


def _nan_then_ok(router: respx.Router) -> respx.Route:
    route = router.get("/v2")
    ok = {"name": "maas", "version": "1", "extensions": []}
    route.side_effect = [_status(503, **{"retry-after-ms": "nan"}), httpx.Response(200, json=ok)]
    return route


def test_retry_after_nan_sync_really_sleeps_back_off() -> None:
    # The policy's own sleep (time.sleep): before the fix, time.sleep(nan) raised ValueError.
    router = respx.Router(base_url="http://maas.test", assert_all_called=False)
    route = _nan_then_ok(router)
    http = httpx.Client(transport=httpx.MockTransport(router.handler))
    policy = RetryPolicy(initial_delay=0.01, jitter=0.0)
    with Client("http://maas.test", http_client=http, retry_policy=policy) as client:
        assert client.server.metadata().name == "maas"
        assert route.call_count == 2
    http.close()


async def test_retry_after_nan_async_does_not_wait_forever() -> None:
    # asyncio.sleep(nan) never returns: the call must end, by the back-off delay.
    router = respx.Router(base_url="http://maas.test", assert_all_called=False)
    route = _nan_then_ok(router)
    http = httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler))
    policy = RetryPolicy(initial_delay=0.01, jitter=0.0)
    async with AsyncClient("http://maas.test", http_client=http, retry_policy=policy) as client:
        metadata = await asyncio.wait_for(client.server.metadata(), timeout=10)
        assert metadata.name == "maas" and route.call_count == 2
    await http.aclose()


async def test_concurrent_calls_retry_independently(
    router: respx.Router, routed_async_client: AsyncClientFactory, delays: Delays
) -> None:
    # The calls of one client share their retry settings: each still counts its own attempts.
    seen: dict[str, int] = {}

    def flaky(request: httpx.Request) -> httpx.Response:
        rid = request.headers["x-request-id"]
        seen[rid] = seen.get(rid, 0) + 1
        return _status(503) if seen[rid] == 1 else httpx.Response(200, json=METADATA)

    router.get("/v2/models/m").mock(side_effect=flaky)
    client = routed_async_client()
    results = await asyncio.gather(*(client.models.get("m") for _ in range(50)))
    assert all(r.name == "m" for r in results)
    assert sorted(seen.values()) == [2] * 50 and len(delays) == 50
