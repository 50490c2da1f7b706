"""``client.embed`` against the real server with all-MiniLM-L6-v2 (tests/pipelines.py): equal to
a reference computed directly, batched in order over many chunks, and the errors that say what
went wrong; the client's own answers checks against a scripted server (respx)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import respx

from maas_client import (
    AsyncClient,
    BadRequestError,
    BatchError,
    Client,
    InputError,
)
from maas_client._exceptions import APIError
from maas_client._task_inputs import TEXT_INPUT, TaskInputs, text_list
from maas_client._tasks import DEFAULT_TASK_BATCH, plan_task_batch
from maas_client.types import ModelMetadata
from tests.client.conftest import ClientFactory
from tests.conftest import RunningServer
from tests.pipelines import reference_embeddings

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar.",
    "Ünïcödé text, emoji 🙂 and 漢字 are embedded too",
    "short",
    "A much longer sentence " * 12,
]


class InferCounter:
    """Counts the inference requests a client sends (an httpx event hook)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, request: httpx.Request) -> None:
        if request.url.path.endswith("/infer"):
            self.calls += 1

    async def hook(self, request: httpx.Request) -> None:
        self(request)


@pytest.fixture(scope="module")
def url(pipeline_server: RunningServer) -> str:
    return pipeline_server.url


@pytest.fixture
def counter() -> InferCounter:
    return InferCounter()


@pytest.fixture
def client(url: str, counter: InferCounter) -> Iterator[Client]:
    with Client(url, event_hooks={"request": [counter]}) as client:
        yield client


@pytest.fixture
async def aclient(url: str, counter: InferCounter) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(url, event_hooks={"request": [counter.hook]}) as client:
        yield client


def cosines(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# --- equal to the reference ---------------------------------------------------------------------


def test_embeddings_equal_the_reference(client: Client, counter: InferCounter) -> None:
    vectors = client.embed("minilm", TEXTS)
    assert isinstance(vectors, np.ndarray)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 384)
    assert cosines(vectors, reference_embeddings(TEXTS)).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert counter.calls == 1


def test_one_str_is_one_text(client: Client) -> None:
    vectors = client.embed("minilm", "a kitten on a mat")
    assert vectors.shape == (1, 384)
    assert cosines(vectors, reference_embeddings(["a kitten on a mat"]))[0] >= 0.9999


def test_any_iterable_of_texts(client: Client) -> None:
    expected = client.embed("minilm", TEXTS[:3])
    for texts in (tuple(TEXTS[:3]), (t for t in TEXTS[:3]), np.array(TEXTS[:3])):
        np.testing.assert_allclose(client.embed("minilm", texts), expected, atol=1e-6)


def test_similar_texts_are_closer(client: Client) -> None:
    cat, kitten, tax = client.embed("minilm", ["a cat sleeps", "a kitten naps", "tax returns"])
    assert float(cat @ kitten) > float(cat @ tax) + 0.2


# --- batching -----------------------------------------------------------------------------------


def test_many_texts_over_several_chunks_keep_their_order(
    client: Client, counter: InferCounter
) -> None:
    texts = [
        f"sentence number {i} about {'cats' if i % 2 else 'the stock market'}" for i in range(50)
    ]
    vectors = client.embed("minilm", texts, batch_size=8, concurrency=3)
    assert vectors.shape == (50, 384)
    assert counter.calls == 7  # 6 chunks of 8 and one of 2
    assert cosines(vectors, reference_embeddings(texts)).min() >= 0.9999


def test_the_default_chunk_when_the_model_declares_no_batch_size(
    client: Client, counter: InferCounter
) -> None:
    assert client.models.get("minilm").parameters["max_batch_size"] == 0
    texts = [f"text {i}" for i in range(DEFAULT_TASK_BATCH + 1)]
    vectors = client.embed("minilm", texts)
    assert counter.calls == 2
    np.testing.assert_allclose(vectors[-1], client.embed("minilm", texts[-1])[0], atol=1e-6)


async def test_async_embed_equals_the_reference(
    aclient: AsyncClient, counter: InferCounter
) -> None:
    texts = [f"{i} green apples" for i in range(20)]
    vectors = await aclient.embed("minilm", texts, batch_size=6)
    assert vectors.dtype == np.float32 and vectors.shape == (20, 384)
    assert counter.calls == 4
    assert cosines(vectors, reference_embeddings(texts)).min() >= 0.9999
    one = await aclient.embed("minilm", TEXTS[0])
    assert cosines(one, reference_embeddings(TEXTS[:1]))[0] >= 0.9999


def test_progress(client: Client, capsys: pytest.CaptureFixture[str]) -> None:
    texts = [f"text {i}" for i in range(40)]
    client.embed("minilm", texts, batch_size=16)  # progress=False by default
    assert capsys.readouterr().err == ""
    client.embed("minilm", texts, batch_size=16, progress="always")
    err = capsys.readouterr().err
    assert "minilm" in err and "40/40" in err


def test_in_process_server(pipeline_repository: Path) -> None:
    with Client.local(pipeline_repository) as local:
        vectors = local.embed("minilm", TEXTS, batch_size=2)
    assert cosines(vectors, reference_embeddings(TEXTS)).min() >= 0.9999


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("empty", [[], (), iter([]), np.array([], dtype=object)])
def test_no_texts_is_a_clear_error_before_anything_is_sent(
    client: Client, counter: InferCounter, empty: Any
) -> None:
    with pytest.raises(InputError, match="needs at least one input"):
        client.embed("minilm", empty)
    assert counter.calls == 0


async def test_no_texts_async(aclient: AsyncClient, counter: InferCounter) -> None:
    with pytest.raises(InputError, match="needs at least one input"):
        await aclient.embed("minilm", [])
    assert counter.calls == 0


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (["fine", 3], "input 1 is a int; texts are str"),
        (Path("notes.txt"), "takes texts, not a .*Path"),
        (42, "takes a str or an iterable of them, not int"),
    ],
)
def test_what_is_not_a_text_is_refused(
    client: Client, counter: InferCounter, texts: Any, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        client.embed("minilm", texts)
    assert counter.calls == 0


def test_a_model_that_is_not_an_embedding_model(client: Client, counter: InferCounter) -> None:
    with pytest.raises(InputError) as info:
        client.embed("sentiment", ["hello"])
    assert "'sentiment' is a model of task 'text-classification'" in str(info.value)
    assert '"task": "embedding"' in str(info.value)
    assert counter.calls == 0


def test_a_server_error_of_the_only_chunk_is_raised_as_it_is(client: Client) -> None:
    with pytest.raises(BadRequestError) as info:
        client.embed("minilm_short", ["short", "word " * 40])
    assert "element 1" in str(info.value) and "at most 16" in str(info.value)


def test_a_failed_chunk_among_others_keeps_the_rest(client: Client) -> None:
    texts = ["short"] * 10 + ["word " * 40]
    with pytest.raises(BatchError) as info:
        client.embed("minilm_short", texts, batch_size=5)
    error = info.value
    assert list(error.failed_rows) == [10]
    assert isinstance(error.failures[0].error, BadRequestError)
    assert error.result is not None and error.result["embedding"].shape == (10, 384)


def test_non_utf8_bytes_are_refused_by_the_server(client: Client) -> None:
    with pytest.raises(BadRequestError, match="UTF-8"):
        client.embed("minilm", [b"fine", b"\xff\xfe bad"])


def test_chunk_sizes() -> None:
    inputs = TaskInputs(TEXT_INPUT, ["x"] * 100)

    def size(declared: int | None, batch_size: int | None) -> int:
        parameters = {} if declared is None else {"max_batch_size": declared}
        metadata = ModelMetadata(name="m", parameters=parameters)
        return plan_task_batch(inputs, metadata, None, batch_size).size

    assert size(8, None) == 8 and size(8, 100) == 8 and size(8, 3) == 3
    assert size(0, None) == DEFAULT_TASK_BATCH and size(0, 100) == 100
    assert size(None, None) == DEFAULT_TASK_BATCH  # no configuration either
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        size(8, 0)


def test_text_list_keeps_strings_and_bytes() -> None:
    assert text_list("one") == ["one"]
    assert text_list(["a", b"b"]) == ["a", b"b"]
    assert text_list(np.array(["x", "y"])) == ["x", "y"]


# --- answers the client checks (a scripted server) ----------------------------------------------

EMBEDDER = {
    "name": "other",
    "versions": ["1"],
    "platform": "onnxruntime_onnx",
    "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
    "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 3]}],
}


def _answer(outputs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"model_name": "other", "model_version": "1", "outputs": outputs}


def test_a_server_without_tasks_in_its_metadata(
    routed_client: ClientFactory, router: respx.Router
) -> None:
    router.get("/v2/models/other").respond(json=EMBEDDER)
    router.get("/v2/models/other/config").respond(404, json={"error": "no config"})
    route = router.post("/v2/models/other/infer").respond(
        json=_answer(
            [{"name": "embedding", "datatype": "FP32", "shape": [2, 3], "data": [1, 0, 0, 0, 1, 0]}]
        )
    )
    vectors = routed_client().embed("other", ["a", "b"])
    np.testing.assert_array_equal(vectors, [[1, 0, 0], [0, 1, 0]])
    assert route.call_count == 1


def test_an_answer_without_embeddings_is_an_error(
    routed_client: ClientFactory, router: respx.Router
) -> None:
    router.get("/v2/models/other").respond(json=EMBEDDER)
    router.get("/v2/models/other/config").respond(404, json={"error": "no config"})
    router.post("/v2/models/other/infer").respond(
        json=_answer([{"name": "vectors", "datatype": "FP32", "shape": [1, 1], "data": [1]}])
    )
    with pytest.raises(APIError, match="without an output 'embedding'"):
        routed_client().embed("other", ["a"])


def test_embeddings_of_the_wrong_shape_are_an_error(
    routed_client: ClientFactory, router: respx.Router
) -> None:
    router.get("/v2/models/other").respond(json=EMBEDDER)
    router.get("/v2/models/other/config").respond(404, json={"error": "no config"})
    router.post("/v2/models/other/infer").respond(
        json=_answer(
            [{"name": "embedding", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]
        )
    )
    with pytest.raises(APIError, match=r"shape \[1, 3\] for 2 texts"):
        routed_client().embed("other", ["a", "b"])


def test_a_model_that_takes_tensors_is_not_an_embedder(
    routed_client: ClientFactory, router: respx.Router
) -> None:
    router.get("/v2/models/mlp").respond(
        json={
            "name": "mlp",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
            "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}],
        }
    )
    with pytest.raises(InputError, match=r"not an embedding model \(inputs: 'input' \(FP32"):
        routed_client().embed("mlp", ["a"])
