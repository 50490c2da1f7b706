"""Embedded mode: ``Client.local`` and ``AsyncClient.local`` run the server in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from maas_client import AsyncClient, Client, ModelNotFoundError
from maas_client._local import LOCAL_URL, LocalTransport
from maas_server import Settings
from tests.client.test_client import mlp_reference

X = np.random.default_rng(3).standard_normal((5, 64)).astype(np.float32)


def test_local_client_runs_the_same_calls(repository: Path) -> None:
    with Client.local(repository, max_retries=0) as client:
        transport = client._pipeline.transport
        assert isinstance(transport, LocalTransport)
        assert client.base_url == LOCAL_URL  # never resolved: nothing leaves the process
        assert client.server.live() is True
        assert client.server.ready() is False  # the corrupt test models, as a real server says
        assert {row.name for row in client.models.list(ready=True)} >= {"mlp", "add"}
        result = client.infer("mlp", X)
        np.testing.assert_allclose(result["output"], mlp_reference(X), rtol=1e-4, atol=1e-5)
        batched = client.infer_batched("mlp", np.tile(X, (30, 1)), progress=False)
        assert len(batched.chunks) == 3
        as_json = client.infer("mlp", X, binary=False)
        np.testing.assert_allclose(as_json["output"], result["output"], rtol=1e-6)
        with pytest.raises(ModelNotFoundError) as caught:
            client.infer("no_such_model", X)
        assert caught.value.status_code == 404 and caught.value.request_id
        assert client.models.stats("mlp").model_stats[0].inference_stats["success"]["count"] >= 5
    assert not transport._thread.is_alive()  # the server's event loop thread is gone
    with pytest.raises(RuntimeError, match="closed"):
        client.server.live()


async def test_async_local_client(repository: Path) -> None:
    async with AsyncClient.local(repository) as client:
        assert await client.server.live() is True
        result = await client.infer("mlp", X)
        np.testing.assert_allclose(result["output"], mlp_reference(X), rtol=1e-4, atol=1e-5)
        batched = await client.infer_batched("mlp", np.tile(X, (20, 1)), progress=False)
        assert batched["output"].shape == (100, 10)
        with pytest.raises(ModelNotFoundError):
            await client.models.get("no_such_model")


def test_local_with_settings(repository: Path) -> None:
    settings = Settings(repository=repository, model_control="explicit", strict_readiness=False)
    with Client.local(settings=settings) as client:
        assert client.models.ready("mlp") is False
        client.models.load("mlp")
        assert client.models.ready("mlp") is True
        assert client.server.ready() is True


def test_local_bundled_examples_and_bad_arguments(tmp_path: Path) -> None:
    with Client.local() as client:
        assert client.infer("digits", np.zeros((1, 64)))["label"].shape == (1,)
    with pytest.raises(FileNotFoundError, match="no model repository"):
        Client.local(tmp_path / "missing")
    with pytest.raises(ValueError, match="not both"):
        Client.local(tmp_path, settings=Settings(repository=tmp_path))


def test_local_client_left_open_is_closed_quietly_at_exit() -> None:
    # Before: at interpreter exit the loop thread died under the lifespan, printing
    # "RuntimeError: no running event loop" and "Task was destroyed but it is pending".
    script = (
        "from maas_client import Client\n"
        "client = Client.local()\n"
        "assert client.server.live() is True\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-W", "always::ResourceWarning", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "Task was destroyed" not in done.stderr, done.stderr
    assert "no running event loop" not in done.stderr, done.stderr
    assert "ResourceWarning" in done.stderr and "Client.local() was left open" in done.stderr
    quiet = subprocess.run(  # by default (ResourceWarning ignored) nothing at all is printed
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    closed = subprocess.run(  # a client closed in time warns of nothing
        [sys.executable, "-W", "always::ResourceWarning", "-c", script + "client.close()\n"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert closed.returncode == 0 and "ResourceWarning" not in closed.stderr, closed.stderr
