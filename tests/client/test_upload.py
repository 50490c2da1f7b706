"""Publishing from the client: ``client.models.upload`` (paths, folders, bytes, ONNX, scikit-learn
and torch objects), ``versions``, ``set_default`` and ``delete``, against real servers."""

from __future__ import annotations

import json
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from maas_client import AsyncClient, BadRequestError, Client, ConflictError
from maas_client._transport import _body
from maas_client._upload import prepare_upload
from maas_server import Settings
from tests import models
from tests.conftest import RunningServer, start_server

X = np.random.default_rng(3).standard_normal((5, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def digits_pipeline() -> tuple[object, np.ndarray, np.ndarray]:
    """StandardScaler + MLPClassifier on scikit-learn's digits, and its held-out rows."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, _ = train_test_split(x, y, test_size=0.25, random_state=0)
    pipeline = make_pipeline(
        StandardScaler(), MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, random_state=0)
    )
    pipeline.fit(x_train, y_train)
    return pipeline, x_test.astype(np.float32), y_train


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repository"
    root.mkdir()
    return root


@pytest.fixture
def running(repo: Path) -> Iterator[RunningServer]:
    server = start_server(Settings(repository=repo))
    yield server
    server.stop()


def test_a_scikit_learn_pipeline_serves_its_own_predictions(
    repo: Path, digits_pipeline: tuple[object, np.ndarray, np.ndarray]
) -> None:
    pipeline, x_test, _ = digits_pipeline
    with Client.local(repo, max_retries=0) as client:
        meta = client.models.upload("digits", pipeline, metadata={"run": "nb-1"}, progress=False)
        assert [t.name for t in meta.inputs] == ["input"]
        assert [t.name for t in meta.outputs] == ["label", "probabilities"]
        result = client.infer("digits", x_test)
        expected = pipeline.predict_proba(x_test.astype(np.float64))  # type: ignore[attr-defined]
        np.testing.assert_array_equal(result["label"], pipeline.predict(x_test))  # type: ignore[attr-defined]
        np.testing.assert_allclose(result["probabilities"], expected, atol=1e-5)
        top = client.infer("digits", x_test[:2], outputs=[_top1()])
        assert top["probabilities"].shape == (2, 1)  # the classes travelled as its labels
        listed = client.models.versions("digits")
        (entry,) = listed.versions
        assert (entry.version, entry.state, entry.default) == ("1", "READY", True)
        assert entry.framework == "sklearn" and entry.metadata["run"] == "nb-1"
        assert entry.metadata["framework_version"] and entry.sha256 and entry.size


def _top1() -> object:
    from maas_client import Output

    return Output("probabilities", classification=1)


def test_rollout_rollback_and_delete(repo: Path) -> None:
    first = models.mlp_model(seed=1)
    second = models.mlp_model(seed=2)
    with Client.local(repo, max_retries=0) as client:
        assert client.models.upload("m", first, progress=False).versions == ["1"]
        client.models.upload("m", onnx.ModelProto.SerializeToString(second), progress=False)
        assert client.infer("m", X).model_version == "2"  # the new default serves at once
        client.models.set_default("m", 1)  # rollback: one call
        assert client.infer("m", X).model_version == "1"
        listed = client.models.versions("m")
        assert (listed.default, listed.serving) == ("1", "1")
        assert [v.version for v in listed.versions] == ["1", "2"]
        client.models.upload("m", first, version=3, make_default=False, progress=False)
        assert client.infer("m", X).model_version == "1"
        client.models.delete("m", 2)
        assert [v.version for v in client.models.versions("m").versions] == ["1", "3"]
        with pytest.raises(ConflictError):
            client.models.delete("m")  # a model with versions needs force
        client.models.delete("m", force=True)
        assert "m" not in {row.name for row in client.models.list()}


def test_a_folder_with_config_and_labels_is_published_whole(repo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    models.save(models.mlp_model(seed=4), folder / "model.onnx")
    (folder / "labels.txt").write_text("".join(f"class-{i}\n" for i in range(10)))
    (folder / "config.json").write_text(json.dumps({"max_batch_size": 8, "labels": "labels.txt"}))
    with Client.local(repo, max_retries=0) as client:
        client.models.upload("folder", folder, progress=False)
        assert client.models.config("folder").max_batch_size == 8
        result = client.infer("folder", X[:1], outputs=[_classified("output")])
        assert result["output"][0, 0].decode().split(":")[2].startswith("class-")
        overridden = {"max_batch_size": 4, "labels": "labels.txt"}
        client.models.upload("folder", folder, config=overridden, progress=False)
        assert client.models.config("folder").max_batch_size == 4


def _classified(name: str) -> object:
    from maas_client import Output

    return Output(name, classification=1)


def test_bad_uploads_publish_nothing_and_the_old_version_keeps_serving(
    repo: Path, tmp_path: Path
) -> None:
    with Client.local(repo, max_retries=0) as client:
        client.models.upload("m", models.mlp_model(seed=1), progress=False)
        with pytest.raises(BadRequestError):
            client.models.upload("m", models.corrupt_model_bytes(), progress=False)
        with pytest.raises(BadRequestError, match="config"):
            client.models.upload("m", models.mlp_model(), config={"max_batch_size": -3})
        assert client.infer("m", X).model_version == "1"
        listed = client.models.versions("m")
        assert [v.version for v in listed.versions] == ["1"]
        assert len(listed.failed_attempts) == 2
    empty = tmp_path / "missing.onnx"
    with pytest.raises(Exception, match="no model file"):
        prepare_upload(empty, name="m", progress=False)


def test_a_file_is_streamed_from_disk_not_held_in_memory(
    running: RunningServer, tmp_path: Path
) -> None:
    """A 24 MB model sent from a path: the client never holds it whole (tracemalloc peak)."""
    weights = np.random.default_rng(0).standard_normal((6_000_000,)).astype(np.float32)
    big = helper.make_model(
        helper.make_graph(
            [helper.make_node("Add", ["x", "w"], ["y"])],
            "big",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6_000_000])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6_000_000])],
            [onnx.numpy_helper.from_array(weights, "w")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    path = tmp_path / "big.onnx"
    models.save(big, path)
    size = path.stat().st_size
    prepared = prepare_upload(path, name="big", progress=False)
    assert _body_is_streamed(prepared)
    prepared.body.close()
    with Client(running.url, max_retries=0, timeout=120) as client:
        tracemalloc.start()
        try:
            client.models.upload("big", path, progress=False)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # The server runs in this process too (uvicorn thread) and holds what it receives; the
        # client's own share must not be the whole file on top of that.
        assert peak < 2.2 * size, (peak, size)
        assert client.models.versions("big").versions[0].size == size


def _body_is_streamed(prepared: object) -> bool:
    import httpx

    body = prepared.body  # type: ignore[attr-defined]
    request = httpx.Request("PUT", "http://x/", headers={"Content-Length": str(body.length)})
    request.stream = body
    return _body(request).pieces is None


async def test_async_upload_versions_and_default(repo: Path) -> None:
    async with AsyncClient.local(repo, max_retries=0) as client:
        meta = await client.models.upload("a", models.mlp_model(seed=1), progress=False)
        assert meta.name == "a"
        await client.models.upload("a", models.mlp_model(seed=2), progress=False)
        await client.models.set_default("a", "1")
        assert (await client.infer("a", X)).model_version == "1"
        assert (await client.models.versions("a")).default == "1"
        await client.models.delete("a", 2)
        assert [v.version for v in (await client.models.versions("a")).versions] == ["1"]


def test_torch_module_uploads_and_serves(repo: Path) -> None:
    torch = pytest.importorskip("torch", reason="needs torch (pip install 'maas[torch]')")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    module.eval()
    x = np.random.default_rng(1).standard_normal((7, 8)).astype(np.float32)
    with Client.local(repo, max_retries=0) as client:
        client.models.upload("t", module, example_inputs=torch.zeros(1, 8), progress=False)
        served = client.infer("t", x)["output"]
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)


def test_upload_progress_counts_the_bytes_sent_once_per_attempt(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    models.save(models.mlp_model(), path)
    prepared = prepare_upload(path, name="m", progress=False)
    counted: list[int] = []
    lock = threading.Lock()

    class Count:
        def update(self, n: int) -> None:
            with lock:
                counted.append(n)

        def close(self) -> None:
            return None

    prepared.body.progress = Count()
    first = b"".join(prepared.body)
    second = b"".join(prepared.body)  # a retried attempt sends it all again
    assert first == second == path.read_bytes()
    assert sum(counted) == len(first)  # the bar went back to 0 for the second attempt
    prepared.body.close()
