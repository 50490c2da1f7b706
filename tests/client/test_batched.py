"""``infer_batched`` against the real server: chunking, order, concurrency, failures, progress."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import pytest

from maas_client import (
    AsyncClient,
    AuthenticationError,
    BatchError,
    BatchResult,
    Client,
    InputError,
    InternalServerError,
    RetryPolicy,
)
from maas_client._batched import chunk_rows
from tests.client.test_client import mlp_reference

SENTINEL = np.float32(-12345.5)
"""A value that marks the rows whose request the flaky proxy fails."""


@pytest.fixture
def client(server_url: str) -> Iterator[Client]:
    with Client(server_url) as client:
        yield client


@pytest.fixture
async def aclient(server_url: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server_url) as client:
        yield client


def rows(n: int, seed: int = 0) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).standard_normal((n, 64)).astype(np.float32)


def test_chunk_rows() -> None:
    assert chunk_rows(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_rows(8, 4) == [(0, 4), (4, 8)]
    assert chunk_rows(0, 4) == []


def test_splits_at_max_batch_size_and_keeps_order(client: Client) -> None:
    x = rows(1000)
    result = client.infer_batched("mlp", x, concurrency=4, progress=False)
    assert isinstance(result, BatchResult)
    assert len(result.chunks) == 16  # mlp's max_batch_size is 64
    assert all(len(chunk["output"]) <= 64 for chunk in result.chunks)
    np.testing.assert_allclose(result["output"], mlp_reference(x), rtol=1e-4, atol=1e-5)
    assert result.response.outputs[0].shape == [1000, 10]
    assert result.timing.attempts == 16
    assert len(set(result.request_ids)) == 16


async def test_splits_at_max_batch_size_and_keeps_order_async(aclient: AsyncClient) -> None:
    x = rows(1000, seed=1)
    result = await aclient.infer_batched("mlp", x, concurrency=4, progress=False)
    assert len(result.chunks) == 16
    np.testing.assert_allclose(result["output"], mlp_reference(x), rtol=1e-4, atol=1e-5)


def test_batch_size_below_and_above_the_limit(client: Client) -> None:
    x = rows(250)
    smaller = client.infer_batched("mlp", x, batch_size=60, progress=False)
    assert [len(c["output"]) for c in smaller.chunks] == [60, 60, 60, 60, 10]
    capped = client.infer_batched("mlp", x, batch_size=1000, progress=False)
    assert [len(c["output"]) for c in capped.chunks] == [64, 64, 64, 58]
    np.testing.assert_array_equal(smaller["output"], capped["output"])


def test_several_inputs_and_outputs(client: Client) -> None:
    a = np.arange(80, dtype=np.float32).reshape(20, 4)
    b = np.ones((20, 4), dtype=np.float32)
    result = client.infer_batched("add", {"a": a, "b": b}, concurrency=2, progress=False)
    assert len(result.chunks) == 3  # add's max_batch_size is 8
    np.testing.assert_array_equal(result["sum"], a + b)
    np.testing.assert_array_equal(result["diff"], a - b)


def test_model_without_a_batch_dimension(client: Client) -> None:
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    with pytest.raises(InputError, match=r"max_batch_size 0.*batch_size="):
        client.infer_batched("identity_fp32", x, progress=False)
    result = client.infer_batched("identity_fp32", x, batch_size=4, progress=False)
    assert len(result.chunks) == 3
    np.testing.assert_array_equal(result["y"], x)


def test_inputs_of_different_lengths(client: Client) -> None:
    a = np.zeros((5, 4), dtype=np.float32)
    with pytest.raises(InputError, match="same number of rows"):
        client.infer_batched("add", {"a": a, "b": a[:4]}, progress=False)
    with pytest.raises(ValueError, match="concurrency"):
        client.infer_batched("mlp", rows(3), concurrency=0, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        client.infer_batched("mlp", rows(3), batch_size=0, progress=False)


def test_empty_input(client: Client) -> None:
    result = client.infer_batched("mlp", rows(0), progress=False)
    assert result.chunks == [] and dict(result) == {}


# --- failures ----------------------------------------------------------------------------------


@contextmanager
def flaky_proxy(server_url: str, status: int) -> Iterator[httpx.Client]:
    """An httpx client that forwards to the real server, except requests holding the sentinel:
    those get ``status``."""
    upstream = httpx.Client(base_url=server_url)

    def handle(request: httpx.Request) -> httpx.Response:
        body = request.read()
        if SENTINEL.tobytes() in body:
            return httpx.Response(status, json={"error": "this chunk always fails"})
        answer = upstream.send(
            upstream.build_request(
                request.method, request.url.path, content=body, headers=request.headers
            )
        )
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    with upstream, httpx.Client(transport=httpx.MockTransport(handle)) as http:
        yield http


def test_failed_chunk_keeps_the_rest(server_url: str, fast_retries: RetryPolicy) -> None:
    x = rows(300)
    x[130, 0] = SENTINEL  # in the third chunk: rows 128-191
    with (
        flaky_proxy(server_url, 500) as http,
        Client("http://maas.test", http_client=http, max_retries=1, retry_policy=fast_retries) as c,
        pytest.raises(BatchError) as caught,
    ):
        c.infer_batched("mlp", x, concurrency=3, progress=False)
    error = caught.value
    assert [(f.start, f.stop) for f in error.failures] == [(128, 192)]
    assert isinstance(error.failures[0].error, InternalServerError)
    assert error.failures[0].error.attempts == 2  # retried, then given up
    np.testing.assert_array_equal(error.failed_rows, np.arange(128, 192))
    kept = np.setdiff1d(np.arange(300), np.arange(128, 192))
    np.testing.assert_array_equal(error.succeeded_rows, kept)
    assert error.result is not None
    np.testing.assert_allclose(error.result["output"], mlp_reference(x[kept]), rtol=1e-4, atol=1e-5)
    assert "64 of 300 rows failed" in str(error) and "rows 128-191" in str(error)
    assert "this chunk always fails" in str(error)


async def test_failed_chunk_keeps_the_rest_async(
    server_url: str, fast_retries: RetryPolicy
) -> None:
    upstream = httpx.AsyncClient(base_url=server_url)

    async def handle(request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        if SENTINEL.tobytes() in body:
            return httpx.Response(503, json={"error": "down for this chunk"})
        answer = await upstream.send(
            upstream.build_request(
                request.method, request.url.path, content=body, headers=request.headers
            )
        )
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    x = rows(200)
    x[0, 5] = SENTINEL
    x[199, 5] = SENTINEL
    async with upstream, httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http:
        client = AsyncClient("http://maas.test", http_client=http, retry_policy=fast_retries)
        with pytest.raises(BatchError) as caught:
            await client.infer_batched("mlp", x, concurrency=2, progress=False)
    error = caught.value
    assert [(f.start, f.stop) for f in error.failures] == [(0, 64), (192, 200)]
    assert error.result is not None and error.result["output"].shape == (128, 10)
    np.testing.assert_array_equal(error.succeeded_rows, np.arange(64, 192))


def test_an_error_every_chunk_would_meet_stops_the_batch(server_url: str) -> None:
    x = rows(640)
    x[64:, 0] = SENTINEL  # every chunk after the first is refused with 401
    with (
        flaky_proxy(server_url, 401) as http,
        Client("http://maas.test", http_client=http) as c,
        pytest.raises(BatchError) as caught,
    ):
        c.infer_batched("mlp", x, concurrency=1, progress=False)
    error = caught.value
    sent = [f for f in error.failures if f.sent]
    unsent = [f for f in error.failures if not f.sent]
    assert [(f.start, f.stop) for f in sent] == [(64, 128)]
    assert isinstance(sent[0].error, AuthenticationError)
    assert len(unsent) == 8 and all(f.error is sent[0].error for f in unsent)
    assert error.result is not None and len(error.result["output"]) == 64
    assert len(error.failed_rows) == 576


# --- progress ----------------------------------------------------------------------------------


def test_progress_bar_only_where_it_is_seen(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    client.infer_batched("mlp", rows(200), progress=True)  # stderr is not a terminal here
    assert capsys.readouterr().err == ""
    client.infer_batched("mlp", rows(200), progress="always")
    err = capsys.readouterr().err
    assert "mlp" in err and "200/200" in err and "rows" in err
