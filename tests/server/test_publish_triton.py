"""Triton's way to publish: the unchanged ``tritonclient.http``'s ``load_model(name,
config=..., files=...)`` against a real server writes the files as a version, then serves it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from maas_server import Settings
from tests import models
from tests.conftest import RunningServer, start_server
from tests.server.publishing import mlp_bytes, mlp_reference, publish_repository

TRITON_CONFIG = json.dumps(
    {
        "name": "triton_mlp",
        "backend": "onnxruntime",
        "max_batch_size": 8,
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
        "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [64]}],
        "output": [{"name": "output", "data_type": "TYPE_FP32", "dims": [10]}],
    }
)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[RunningServer]:
    server = start_server(
        Settings(repository=publish_repository(tmp_path / "repo"), model_control="explicit")
    )
    yield server
    server.stop()


def _check(client: httpclient.InferenceServerClient, name: str, seed: int) -> None:
    x = np.linspace(-1, 1, 128, dtype=np.float32).reshape(2, 64)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    result = client.infer(name, [inp])
    np.testing.assert_allclose(
        result.as_numpy("output"), mlp_reference(seed, x), rtol=1e-4, atol=1e-5
    )


def test_load_model_with_files_publishes_a_model_that_answers(
    running: RunningServer, tmp_path: Path
) -> None:
    client = httpclient.InferenceServerClient(url=running.url.removeprefix("http://"))
    try:
        assert not client.is_model_ready("triton_mlp")
        client.load_model(
            "triton_mlp", config=TRITON_CONFIG, files={"file:1/model.onnx": mlp_bytes(3)}
        )
        assert client.is_model_ready("triton_mlp")
        _check(client, "triton_mlp", seed=3)
        assert client.get_model_config("triton_mlp")["max_batch_size"] == 8
        # the same version again replaces it, as Triton's override directory does
        client.load_model(
            "triton_mlp", config=TRITON_CONFIG, files={"file:1/model.onnx": mlp_bytes(4)}
        )
        _check(client, "triton_mlp", seed=4)
        # a file that does not load is refused with the reason; version 1 keeps answering
        with pytest.raises(InferenceServerException, match="does not load"):
            client.load_model(
                "triton_mlp",
                config=TRITON_CONFIG,
                files={"file:2/model.onnx": models.corrupt_model_bytes()},
            )
        with pytest.raises(InferenceServerException, match=r"needs parameters\.config"):
            client.load_model("triton_mlp", files={"file:2/model.onnx": mlp_bytes(5)})
        with pytest.raises(InferenceServerException, match="would leave the version folder"):
            client.load_model("triton_mlp", config=TRITON_CONFIG, files={"file:1/../../evil": b"x"})
        _check(client, "triton_mlp", seed=4)
        repo = tmp_path / "repo"
        assert sorted(p.name for p in (repo / "triton_mlp").iterdir()) == ["1", "config.json"]
        assert not (tmp_path / "evil").exists() and not (repo / "evil").exists()
        # a plain load (no files) still works as before
        client.load_model("mlp")
        assert client.is_model_ready("mlp")
    finally:
        client.close()
