"""Several servers behind one client: the pool's choices, and two real servers, one stopped."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from maas_client import (
    APIConnectionError,
    AsyncClient,
    Client,
    Endpoints,
    RetryPolicy,
    ServiceUnavailableError,
)
from maas_client._endpoints import EndpointPool, endpoint_failure
from maas_server import Settings
from tests.client.conftest import Delays
from tests.client.test_client import mlp_reference
from tests.conftest import RunningServer, free_port, start_server, wait_for
from tests.waiting import until

X = np.random.default_rng(7).standard_normal((2, 64)).astype(np.float32)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def refused() -> APIConnectionError:
    return APIConnectionError("connection error", sent=False)


def unavailable() -> ServiceUnavailableError:
    response = httpx.Response(503, request=httpx.Request("GET", "http://a"))
    return ServiceUnavailableError("503", response=response, error="busy")


# --- the pool --------------------------------------------------------------------------------


def test_settings() -> None:
    assert Endpoints(["http://a:1/", " http://b:2"]).urls == ("http://a:1", "http://b:2")
    with pytest.raises(ValueError, match="http://"):
        Endpoints(["a:1"])
    with pytest.raises(ValueError, match="at least one"):
        Endpoints([])
    with pytest.raises(ValueError, match="eject_after"):
        Endpoints(["http://a"], eject_after=0)
    assert Client("http://a:1,http://b:2")._pool is not None
    assert Client(["http://a:1"])._pool is None
    assert Client(["http://a:1", "http://b:2"]).base_url == "http://a:1"


def test_least_outstanding_then_in_turn() -> None:
    pool = EndpointPool(Endpoints(["http://a", "http://b", "http://c"]))
    a, b, c = pool.endpoints
    first = [pool.acquire() for _ in range(3)]
    assert first == [a, b, c]  # all idle: in turn
    pool.release(a, None)
    assert pool.acquire() is a  # the only one with nothing outstanding
    for endpoint in (a, b, c):
        pool.release(endpoint, None)
    assert [pool.acquire() for _ in range(3)] == [b, c, a]  # the turn goes on


def test_a_failed_endpoint_is_avoided_by_the_retry() -> None:
    pool = EndpointPool(Endpoints(["http://a", "http://b"]))
    route = pool.route()
    endpoint = route.acquire()
    route.release(endpoint, refused())
    assert route.fail_over(refused())
    assert route.acquire() is not endpoint
    assert not route.fail_over(RuntimeError())  # not the endpoint's fault: back-off as usual


def test_ejection_probing_and_return() -> None:
    clock = Clock()
    settings = Endpoints(
        ["http://a", "http://b"], eject_after=2, probe_interval=1.0, max_probe_interval=3.0
    )
    pool = EndpointPool(settings, clock=clock)
    a, b = pool.endpoints
    for _ in range(2):
        pool.acquire(avoid=b)
        pool.release(a, unavailable())
    assert a.ejected and a.ejections == 1
    assert pool.available() == ["http://b"]
    assert all(pool.acquire() is b for _ in range(5))
    assert pool.due_probes() == []
    clock.now += 1.0
    assert pool.due_probes() == [a]
    assert pool.due_probes() == []  # one probe at a time
    pool.probed(a, ready=False)
    assert a.ejected and a.probe_wait == 2.0
    clock.now += 2.0
    assert pool.due_probes() == [a]
    pool.probed(a, ready=False)
    assert a.probe_wait == 3.0  # capped
    clock.now += 3.0
    assert pool.due_probes() == [a]
    pool.probed(a, ready=True)
    assert not a.ejected and a.failures == 0
    assert pool.available() == ["http://a", "http://b"]


def test_failures_must_be_consecutive() -> None:
    pool = EndpointPool(Endpoints(["http://a", "http://b"], eject_after=2))
    a = pool.endpoints[0]
    for error in (refused(), None, refused(), RuntimeError("slow"), refused()):
        pool.acquire(avoid=pool.endpoints[1])
        pool.release(a, error)
    assert not a.ejected  # a success in between resets the count; other errors do not count
    assert a.failures == 1


def test_every_endpoint_ejected_still_sends() -> None:
    clock = Clock()
    pool = EndpointPool(Endpoints(["http://a", "http://b"], eject_after=1), clock=clock)
    a, b = pool.endpoints
    pool.acquire()
    pool.release(a, refused())
    clock.now += 0.5
    pool.acquire()
    pool.release(b, refused())
    assert pool.available() == []
    assert pool.acquire() is a  # its probe is due first
    pool.release(a, None)  # it answered: back in
    assert pool.available() == ["http://a"]


def test_what_counts_as_the_endpoints_failure() -> None:
    assert endpoint_failure(refused())
    assert endpoint_failure(unavailable())
    from maas_client import APITimeoutError

    assert endpoint_failure(APITimeoutError("connect", sent=False))
    assert not endpoint_failure(APITimeoutError("read", sent=True))  # a slow model
    assert not endpoint_failure(ValueError())


# --- two real servers ------------------------------------------------------------------------


@pytest.fixture
def two_servers(repository: Path) -> Iterator[list[RunningServer]]:
    settings = Settings(repository=repository, strict_readiness=False)
    servers = [start_server(settings), start_server(settings)]
    yield servers
    for running in servers:
        running.stop()


def served(url: str) -> int:
    """How many ``mlp`` requests a server answered."""
    with Client(url) as client:
        stats = client.models.stats("mlp").model_stats
    return sum(int(entry.inference_stats["success"]["count"]) for entry in stats)


def quick_retries() -> RetryPolicy:
    return RetryPolicy(initial_delay=0.05, max_delay=0.2)


def test_requests_spread_over_both(two_servers: list[RunningServer]) -> None:
    a, b = two_servers
    with Client([a.url, b.url]) as client:
        for _ in range(20):
            client.infer("mlp", X)
        raw = client.with_raw_response.models.get("mlp")
        assert raw.http_response.request.url.host == "127.0.0.1"
    assert served(a.url) == 10 and served(b.url) == 10


def test_one_server_stopped_mid_run(two_servers: list[RunningServer], repository: Path) -> None:
    a, b = two_servers
    endpoints = Endpoints([a.url, b.url], eject_after=2, probe_interval=0.2)
    stopped = threading.Event()
    results: list[Any] = []

    def call(i: int) -> Any:
        if i == 100:
            threading.Thread(target=lambda: (a.stop(), stopped.set())).start()
        if i > 100:
            stopped.wait(30)  # the rest run once the first server is gone
        return client.infer("mlp", X, max_retries=3)

    with Client(endpoints, retry_policy=quick_retries()) as client:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(call, range(300)))
        assert len(results) == 300
        for result in results:
            np.testing.assert_allclose(result["output"], mlp_reference(X), rtol=1e-4, atol=1e-5)
        pool_a = client._pool.endpoints[0]  # type: ignore[union-attr]
        assert pool_a.ejected and pool_a.ejections >= 1
        assert served(b.url) >= 200
        # The first server comes back on its port: a probe notices and takes it back.
        port = int(a.url.rsplit(":", 1)[1])
        settings = Settings(repository=repository, strict_readiness=False)
        two_servers[0] = start_server(settings, port=port)

        def back() -> bool:
            client.infer("mlp", X)
            return not pool_a.ejected

        wait_for(back, timeout=20)
        for _ in range(10):
            client.infer("mlp", X)
        assert served(a.url) > 0  # the new server on the old port got requests


async def test_one_server_stopped_mid_run_async(two_servers: list[RunningServer]) -> None:
    a, b = two_servers
    endpoints = Endpoints([a.url, b.url], eject_after=2, probe_interval=0.2)
    async with AsyncClient(endpoints, retry_policy=quick_retries(), max_retries=3) as client:
        first = await asyncio.gather(*(client.infer("mlp", X) for _ in range(50)))
        # The first server stops while 150 requests are in flight over both servers.
        stopping = asyncio.ensure_future(asyncio.to_thread(a.stop))
        rest = await asyncio.gather(*(client.infer("mlp", X) for _ in range(150)))
        await stopping
        before_after = served(b.url)
        rest += await asyncio.gather(*(client.infer("mlp", X) for _ in range(50)))
        assert len(first) + len(rest) == 250
        assert all(r["output"].shape == (2, 10) for r in [*first, *rest])
        stopped = client._pool.endpoints[0] if client._pool is not None else None
        assert stopped is not None and stopped.ejected
        await until(lambda: stopped.probe_at <= time.monotonic())  # its probe is due
        await client.infer("mlp", X)  # starts a probe task of the stopped server
    # Everything sent once the first server was gone went to the second. (How the 150 sent
    # while it stopped split between the two depends on when the stop lands.)
    assert served(b.url) == before_after + 51


def test_fail_over_without_back_off(server_url: str, delays: Delays) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    policy = RetryPolicy(jitter=0.0, sleep=delays.sleep)
    with Client([dead, server_url], retry_policy=policy, max_retries=1) as client:
        start = time.monotonic()
        for _ in range(6):
            client.infer("mlp", X)
        assert time.monotonic() - start < 5
    assert delays and all(d == 0.0 for d in delays)  # straight to the other server


def test_with_options_shares_the_pool_and_can_replace_it(server_url: str) -> None:
    with Client([server_url, server_url + "/"]) as client:
        copy = client.with_options(timeout=5.0)
        assert copy._pool is client._pool
        single = client.with_options(base_url=server_url)
        assert single._pool is None and single.server.live()
