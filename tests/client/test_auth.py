"""API keys against a real server with access control: the key travels as a bearer token, 401 and
403 map to their errors with the server's message, and a rate-limited key's 429 is retried after
the wait the server asks for."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from maas_client import AsyncClient, AuthenticationError, Client, PermissionDeniedError, RetryPolicy
from maas_server import Settings
from maas_server.keys_file import add_key
from tests import models
from tests.conftest import RunningServer, start_server

ADMIN = "sk-admin-for-tests"


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningServer, dict[str, str]]]:
    root = tmp_path_factory.mktemp("secured")
    models.save(models.mlp_model(), root / "repository" / "mlp" / "1" / "model.onnx")
    keys_file = root / "keys.json"
    reader, _ = add_key(keys_file, "reader", ["read", "infer"])
    # 4/s: a request that follows another within 250 ms (however busy the machine) gets a 429
    limited, _ = add_key(keys_file, "limited", ["read", "infer"], rate=4.0, burst=1)
    running = start_server(
        Settings(
            repository=Path(root / "repository"),
            strict_readiness=False,
            api_keys_file=keys_file,
            admin_api_key=ADMIN,
        )
    )
    yield running, {"reader": reader, "limited": limited}
    running.stop()


X = np.ones((1, 64), dtype=np.float32)


def test_keys_and_scopes(secured: tuple[RunningServer, dict[str, str]]) -> None:
    server, keys = secured
    with Client(server.url, api_key=None) as anonymous:
        assert anonymous.server.live() is True  # health needs no key
        with pytest.raises(AuthenticationError) as missing:
            anonymous.models.get("mlp")
    assert missing.value.status_code == 401 and "missing API key" in missing.value.error
    with Client(server.url, api_key="maas_wrong") as wrong, pytest.raises(AuthenticationError):
        wrong.infer("mlp", X)

    with Client(server.url, api_key=keys["reader"]) as reader:
        assert reader.infer("mlp", X)["output"].shape == (1, 10)
        with pytest.raises(PermissionDeniedError) as denied:
            reader.models.unload("mlp")
    assert denied.value.status_code == 403 and "lacks the 'admin' scope" in denied.value.error
    assert denied.value.attempts == 1

    with Client(server.url, api_key=ADMIN) as admin:
        admin.models.load("mlp")


def test_key_from_the_environment(
    secured: tuple[RunningServer, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, keys = secured
    monkeypatch.setenv("MAAS_API_KEY", keys["reader"])
    with Client(server.url) as client:
        assert client.models.ready("mlp") is True


def test_rate_limit_is_retried_after_the_servers_wait(
    secured: tuple[RunningServer, dict[str, str]],
) -> None:
    server, keys = secured
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    policy = RetryPolicy(jitter=0.0, sleep=sleep)
    with Client(server.url, api_key=keys["limited"], retry_policy=policy) as client:
        results = [client.infer("mlp", X, validate=False) for _ in range(3)]
    assert any(r.timing.attempts > 1 for r in results)  # 4/s with a burst of 1: some wait
    assert waits and all(0 < w <= 0.26 for w in waits)  # retry-after-ms (250 ms), not 1 s


async def test_rate_limit_async(secured: tuple[RunningServer, dict[str, str]]) -> None:
    server, keys = secured
    async with AsyncClient(server.url, api_key=keys["limited"]) as aclient:
        answers = [await aclient.with_raw_response.models.get("mlp") for _ in range(3)]
    assert all(a.parse().name == "mlp" for a in answers)
    assert any(a.attempts > 1 for a in answers)  # a 429 was retried, after <= 250 ms
