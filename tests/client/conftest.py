"""Fixtures of the client tests.

- ``lifecycle_server``: a real uvicorn of its own (explicit model control, a small body limit)
  for tests that load and unload models or need a 413, so the shared ``server`` keeps its state.
- ``delays`` / ``fast_retries``: a retry policy that records each wait instead of sleeping.
- ``routed_client`` / ``routed_async_client``: clients whose httpx client is wired to a respx
  router, for answers that a real maas server does not give (Triton, MLServer, 429...).
- ``generation_server``: a real uvicorn over the example repository (``tiny_gpt``), as the
  generation tests of the server use; ``make_generation_client``: clients of it on the lean
  transport and on an injected httpx client (the test runs once with each); ``engine_gate``:
  its ``tiny_gpt`` engine behind a :class:`~tests.waiting.StepGate`, which a test closes to
  keep a generation running until it has cut it short.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from maas_client import AsyncClient, Client, RetryPolicy
from maas_server import Settings, default_repository
from maas_server.generation import GenerationService
from tests import models
from tests.conftest import RunningServer, start_server, wait_for
from tests.server.conftest import engine_of
from tests.waiting import StepGate

BASE = "http://maas.test"
SERVER_METADATA = {"name": "maas", "version": "0.1.0", "extensions": ["binary_tensor_data"]}


@pytest.fixture(scope="module")
def lifecycle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("lifecycle")
    models.save(models.mlp_model(), root / "mlp" / "1" / "model.onnx")
    (root / "mlp" / "config.json").write_text(json.dumps({"max_batch_size": 64}))
    models.save(models.identity_model(1, ["batch", 3]), root / "identity" / "1" / "model.onnx")
    running = start_server(
        Settings(
            repository=Path(root),
            model_control="explicit",
            strict_readiness=False,
            max_body_bytes=4096,
        )
    )
    yield running
    running.stop()


class Delays(list[float]):
    """The waits a retry policy asked for, in order (sync and async)."""

    def sleep(self, seconds: float) -> None:
        self.append(seconds)

    async def async_sleep(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def delays() -> Delays:
    return Delays()


@pytest.fixture
def fast_retries(delays: Delays) -> RetryPolicy:
    """Back-off of 0.5 s doubling to 8 s, without jitter, recorded instead of slept."""
    return RetryPolicy(jitter=0.0, sleep=delays.sleep, async_sleep=delays.async_sleep)


@pytest.fixture
def router() -> respx.Router:
    router = respx.Router(base_url=BASE, assert_all_called=False)
    router.get("/v2").respond(json=SERVER_METADATA)
    return router


ClientFactory = Callable[..., Client]
AsyncClientFactory = Callable[..., AsyncClient]


@pytest.fixture
def routed_client(router: respx.Router, fast_retries: RetryPolicy) -> Iterator[ClientFactory]:
    made: list[Client] = []

    def make(**kwargs: object) -> Client:
        kwargs.setdefault("retry_policy", fast_retries)
        http = httpx.Client(transport=httpx.MockTransport(router.handler))
        client = Client(BASE, http_client=http, **kwargs)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
async def routed_async_client(
    router: respx.Router, fast_retries: RetryPolicy
) -> AsyncIterator[AsyncClientFactory]:
    made: list[AsyncClient] = []

    def make(**kwargs: object) -> AsyncClient:
        kwargs.setdefault("retry_policy", fast_retries)
        http = httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler))
        client = AsyncClient(BASE, http_client=http, **kwargs)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


@pytest.fixture(scope="session")
def generation_server() -> Iterator[RunningServer]:
    running = start_server(Settings(repository=default_repository(), strict_readiness=False))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def generation_url(generation_server: RunningServer) -> str:
    return generation_server.url


@pytest.fixture(params=["lean", "httpx"])
def make_generation_client(
    request: pytest.FixtureRequest, generation_url: str
) -> Iterator[ClientFactory]:
    made: list[Client] = []
    https: list[httpx.Client] = []

    def make(**kwargs: Any) -> Client:
        if request.param == "httpx":
            https.append(httpx.Client(timeout=30.0))
            kwargs["http_client"] = https[-1]
        made.append(Client(generation_url, **kwargs))
        return made[-1]

    yield make
    for client in made:
        client.close()
    for http in https:
        http.close()


@pytest.fixture
def engine_gate(generation_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> StepGate:
    """The ``tiny_gpt`` engine (``.engine``) behind a :class:`StepGate`, open until a test calls
    ``pause_after``; waits until the engine is idle first."""
    service: GenerationService = generation_server.server.config.app.state.generation
    engine = engine_of(service, generation_server.url, "tiny_gpt")
    wait_for(lambda: engine.active_sequences == 0)
    return StepGate.install(engine, monkeypatch, allow=10**9)
