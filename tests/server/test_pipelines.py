"""Pipeline models over the V2 protocol: BYTES texts and images in, embeddings or labels and
scores out, equal to references computed directly in tests/pipelines.py; raw mode; metadata;
statistics; every bad input refused with a 4xx that names it."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from maas_client.codec import HEADER_LENGTH
from maas_client.protocol import TensorPayload, decode_response, encode_request
from maas_server import Settings
from tests.conftest import RunningServer
from tests.pipelines import (
    SENTIMENT_LABELS,
    minilm_path,
    minilm_tokenizer_path,
    ppocr_reference,
    reference_embeddings,
    text_image,
)
from tests.server.apps import asgi_app

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar.",
    "Ünïcödé text, emoji 🙂 and 漢字 are tokenized too",
    "short",
    "A much longer sentence " * 12,
]


def _infer(
    url: str, model: str, name: str, items: list[Any], binary: bool = True, **params: Any
) -> httpx.Response:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    body = encode_request([TensorPayload(name, array, "BYTES", binary)], parameters=params or None)
    headers = {}
    if body.header_length is not None:
        headers[HEADER_LENGTH] = str(body.header_length)
    return httpx.post(
        f"{url}/v2/models/{model}/infer", content=bytes(body.content), headers=headers, timeout=60
    )


def _outputs(answer: httpx.Response) -> dict[str, np.ndarray]:
    assert answer.status_code == 200, answer.text
    header = answer.headers.get(HEADER_LENGTH)
    _, arrays = decode_response(answer.content, int(header) if header is not None else None)
    return arrays


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def url(pipeline_server: RunningServer) -> str:
    return pipeline_server.url


@pytest.mark.parametrize("binary", [True, False])
def test_embeddings_over_v2_equal_the_reference(url: str, binary: bool) -> None:
    items = [t.encode("utf-8") for t in TEXTS]
    embedding = _outputs(_infer(url, "minilm", "text", items, binary=binary))["embedding"]
    reference = reference_embeddings(TEXTS)
    assert embedding.shape == (len(TEXTS), 384)
    assert embedding.dtype == np.float32
    assert (_cosines(embedding, reference) >= 0.9999).all()
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-5)


def test_texts_as_a_column_and_as_a_raw_body(url: str) -> None:
    column = np.empty((2, 1), dtype=object)
    column[:, 0] = [TEXTS[0].encode(), TEXTS[1].encode()]
    body = encode_request([TensorPayload("text", column, "BYTES", True)])
    answer = httpx.post(
        f"{url}/v2/models/minilm/infer",
        content=bytes(body.content),
        headers={HEADER_LENGTH: str(body.header_length)},
    )
    embedding = _outputs(answer)["embedding"]
    assert (_cosines(embedding, reference_embeddings(TEXTS[:2])) >= 0.9999).all()
    raw = httpx.post(
        f"{url}/v2/models/minilm/infer", content=TEXTS[2].encode(), headers={HEADER_LENGTH: "0"}
    )
    (row,) = _outputs(raw)["embedding"]
    assert float(row @ reference_embeddings(TEXTS[2:3])[0]) >= 0.9999


def test_metadata_shows_the_pipeline_and_the_raw_tensors(url: str) -> None:
    meta = httpx.get(f"{url}/v2/models/minilm").json()
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    parameters = meta["parameters"]
    assert parameters["task"] == "embedding"
    assert parameters["pipeline"] is True
    assert parameters["dimensions"] == 384 and parameters["matryoshka"] is False
    assert [t["name"] for t in parameters["raw_inputs"]] == [
        "input_ids",
        "attention_mask",
        "token_type_ids",
    ]
    assert parameters["raw_outputs"] == [
        {"name": "last_hidden_state", "datatype": "FP32", "shape": [-1, -1, 384]}
    ]
    image = httpx.get(f"{url}/v2/models/ppocr_dir").json()
    assert image["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in image["outputs"]] == ["label", "score"]
    assert image["parameters"]["labels"] == ["0", "180"]
    assert image["parameters"]["top_k"] == 5


def test_raw_mode_exposes_the_model_tensors(url: str) -> None:
    ids = np.array([[101, 7592, 2088, 102]], dtype=np.int64)
    tensors = [
        TensorPayload("input_ids", ids, "INT64", True),
        TensorPayload("attention_mask", np.ones_like(ids), "INT64", True),
        TensorPayload("token_type_ids", np.zeros_like(ids), "INT64", True),
    ]
    body = encode_request(tensors, parameters={"pipeline": False})
    answer = httpx.post(
        f"{url}/v2/models/minilm/infer",
        content=bytes(body.content),
        headers={HEADER_LENGTH: str(body.header_length)},
    )
    hidden = _outputs(answer)["last_hidden_state"]
    assert hidden.shape == (1, 4, 384)
    pooled = hidden.mean(axis=1)
    pooled /= np.linalg.norm(pooled)
    assert float(pooled[0] @ reference_embeddings(["hello world"])[0]) >= 0.9999
    # text is not what the raw model takes
    refused = _infer(url, "minilm", "text", [b"hello"], pipeline=False)
    assert refused.status_code == 400
    assert "'text'" in refused.json()["error"]


def test_image_classification_equals_the_reference(url: str) -> None:
    images = [
        text_image("Hello world 123"),
        text_image("Hello world 123", rotate=True),
        text_image("Upside down text", rotate=True, fmt="JPEG"),
        text_image("Plain upright words", fmt="WEBP"),
    ]
    out = _outputs(_infer(url, "ppocr_dir", "image", images, top_k=2))
    reference = ppocr_reference(images)
    labels = [[label.decode() for label in row] for row in out["label"]]
    assert [row[0] for row in labels] == ["0", "180", "180", "0"]
    assert out["score"].shape == (4, 2)
    for row, names in enumerate(labels):
        expected = [reference[row, int(name) // 180] for name in names]
        np.testing.assert_allclose(out["score"][row], expected, atol=1e-4)
    assert (out["score"][:, 0] >= out["score"][:, 1]).all()


def test_top_k_defaults_and_is_capped(url: str) -> None:
    out = _outputs(_infer(url, "sentiment", "text", [b"good movie", b"bad movie"]))
    assert out["label"].shape == (2, 3)  # default 5, capped at the 3 labels
    assert {label.decode() for label in out["label"][0]} == set(SENTIMENT_LABELS)
    np.testing.assert_allclose(out["score"].sum(axis=1), 1.0, rtol=1e-5)  # softmax
    one = _outputs(_infer(url, "sentiment", "text", [b"good movie"], top_k=1))
    assert one["label"].shape == (1, 1)
    assert one["label"][0, 0] == out["label"][0, 0]


def test_text_classification_scores_equal_a_direct_run(url: str) -> None:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from tests.pipelines import minilm_tokenizer_path, text_classifier_model

    text = "what a wonderful day"
    tokenizer = Tokenizer.from_file(str(minilm_tokenizer_path()))
    tokenizer.no_padding()
    encoding = tokenizer.encode(text)
    session = ort.InferenceSession(text_classifier_model(30522, 3))
    (logits,) = session.run(
        None,
        {
            "input_ids": np.array([encoding.ids], dtype=np.int64),
            "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
        },
    )
    expected = np.exp(logits[0] - logits[0].max())
    expected /= expected.sum()
    out = _outputs(_infer(url, "sentiment", "text", [text.encode()]))
    order = np.argsort(-expected)
    assert [label.decode() for label in out["label"][0]] == [SENTIMENT_LABELS[i] for i in order]
    np.testing.assert_allclose(out["score"][0], expected[order], rtol=1e-5)


def test_steps_count_in_the_statistics(url: str) -> None:
    def stats() -> dict[str, Any]:
        entry: dict[str, Any] = httpx.get(f"{url}/v2/models/minilm/stats").json()["model_stats"][0]
        return entry

    before = stats()
    _outputs(_infer(url, "minilm", "text", [b"one", b"two", b"three"]))
    after = stats()
    assert after["inference_count"] - before["inference_count"] == 3
    for key in ("compute_input", "compute_infer", "compute_output"):
        assert after["inference_stats"][key]["ns"] > before["inference_stats"][key]["ns"]


# --- bad input ----------------------------------------------------------------------------------


def _error(answer: httpx.Response, status: int) -> str:
    assert answer.status_code == status, answer.text
    message: str = answer.json()["error"]
    return message


def test_text_that_is_not_utf8_is_refused(url: str) -> None:
    message = _error(_infer(url, "minilm", "text", [b"fine", b"\xff\xfe bad"]), 400)
    assert "input 'text'" in message and "element 1" in message and "UTF-8" in message


def test_an_empty_list_is_refused(url: str) -> None:
    message = _error(_infer(url, "minilm", "text", []), 400)
    assert "'text' is empty" in message


def test_too_many_tokens_without_truncation_is_refused(url: str) -> None:
    long = ("word " * 40).encode()
    message = _error(_infer(url, "minilm_short", "text", [b"short", long]), 400)
    assert "element 1" in message and "at most 16" in message


def test_a_corrupt_image_is_refused(url: str) -> None:
    good = text_image("fine")
    message = _error(_infer(url, "ppocr_dir", "image", [good, good[:40]]), 400)
    assert "input 'image'" in message and "element 1" in message
    message = _error(_infer(url, "ppocr_dir", "image", [b"not an image at all"]), 400)
    assert "element 0" in message


def test_an_image_over_the_pixel_limit_is_413(url: str) -> None:
    out = io.BytesIO()
    Image.new("L", (8000, 6000), "white").save(out, format="PNG")  # 48 Mpx, compresses small
    message = _error(_infer(url, "ppocr_dir", "image", [out.getvalue()]), 413)
    assert "input 'image'" in message and "48000000 pixels" in message


def test_wrong_names_datatypes_and_parameters_are_refused(url: str) -> None:
    assert "has no input 'words'" in _error(_infer(url, "minilm", "words", [b"x"]), 400)
    body = {"inputs": [{"name": "text", "datatype": "INT64", "shape": [1], "data": [1]}]}
    answer = httpx.post(f"{url}/v2/models/minilm/infer", json=body)
    assert "expected datatype BYTES" in _error(answer, 400)
    assert "top_k" in _error(_infer(url, "sentiment", "text", [b"x"], top_k=0), 400)
    assert "'pipeline'" in _error(_infer(url, "minilm", "text", [b"x"], pipeline="no"), 400)
    body = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}],
        "outputs": [{"name": "logits"}],
    }
    answer = httpx.post(f"{url}/v2/models/minilm/infer", json=body)
    assert "no output 'logits'" in _error(answer, 400)


@pytest.mark.parametrize("merge", ["before", "after"])
async def test_requests_waiting_together_run_as_one_batch(tmp_path: Path, merge: str) -> None:
    version = tmp_path / "minilm" / "1"
    version.mkdir(parents=True)
    shutil.copyfile(minilm_path(), version / "model.onnx")
    shutil.copyfile(minilm_tokenizer_path(), version / "tokenizer.json")
    config = {
        "task": "embedding",
        "max_batch_size": 8,
        # a batch waits (up to a minute) until it is full: the 4 requests below run as one
        "dynamic_batching": {"max_queue_delay_microseconds": 60_000_000},
        "pipeline": {"text": {"merge": merge}},
    }
    (tmp_path / "minilm" / "config.json").write_text(json.dumps(config))
    texts = (TEXTS * 2)[:8]  # of very different lengths
    requests = [texts[i : i + 2] for i in range(0, 8, 2)]
    async with asgi_app(Settings(repository=tmp_path), ["minilm"]) as (_, client):

        async def embed(pair: list[str]) -> np.ndarray:
            body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": pair}]}
            answer = await client.post("/v2/models/minilm/infer", json=body)
            assert answer.status_code == 200, answer.text
            (output,) = answer.json()["outputs"]
            return np.array(output["data"], dtype=np.float32).reshape(output["shape"])

        results = await asyncio.gather(*(embed(pair) for pair in requests))
        stats = (await client.get("/v2/models/minilm/stats")).json()["model_stats"][0]
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in stats["batch_stats"]] == [
        (8, 1)
    ]
    for pair, result in zip(requests, results, strict=True):
        # padded to the batch's longest text, pooled under each text's own mask
        assert (_cosines(result, reference_embeddings(pair)) >= 0.9999).all()
