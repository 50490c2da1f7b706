"""``client.classify`` against the real server: PaddleOCR's text-direction classifier on images
rendered with Pillow (upright and upside down) given as paths, bytes, PIL images and arrays; a
text classifier; order over many chunks; the result's sequence, arrays, DataFrame, repr and
notebook display; the errors. The client's own answer checks run against a scripted server."""

from __future__ import annotations

import base64
import io
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import respx
from PIL import Image

from maas_client import (
    AsyncClient,
    BadRequestError,
    Classifications,
    Client,
    InputError,
    PayloadTooLargeError,
)
from maas_client._exceptions import APIError
from maas_client._task_inputs import task_inputs
from maas_client._thumbnails import thumbnail_uri
from tests.client.conftest import ClientFactory
from tests.client.test_embed import InferCounter
from tests.conftest import RunningServer
from tests.pipelines import SENTIMENT_LABELS, ppocr_reference, text_image

LINES = ["Hello World 12345", "The quick brown fox", "maas 2026", "Invoice total: 42.00"]


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


def rendered(text: str, rotate: bool) -> Image.Image:
    return Image.open(io.BytesIO(text_image(text, rotate=rotate))).convert("RGB")


def expected_labels(rotations: list[bool]) -> list[str]:
    return ["180" if rotate else "0" for rotate in rotations]


# --- images -------------------------------------------------------------------------------------


def test_upright_and_upside_down_lines_as_bytes(client: Client) -> None:
    rotations = [False, True, True, False]
    images = [text_image(line, rotate=r) for line, r in zip(LINES, rotations, strict=True)]
    result = client.classify("ppocr_dir", images, top_k=2)
    assert isinstance(result, Classifications)
    assert len(result) == 4 and result.kind == "image" and result.top_k == 2
    assert list(result.labels[:, 0]) == expected_labels(rotations)
    reference = ppocr_reference(images)
    best = reference.max(axis=1)
    np.testing.assert_allclose(result.scores[:, 0], best, rtol=1e-4, atol=1e-6)
    assert result[1][0] == ("180", pytest.approx(float(best[1]), rel=1e-4))
    assert [label for label, _ in result[0]] == ["0", "180"]
    assert result.model_name == "ppocr_dir" and result.model_version == "1"


def test_paths_pil_images_and_arrays(client: Client, tmp_path: Path) -> None:
    up, down = tmp_path / "up.png", tmp_path / "down.jpg"
    up.write_bytes(text_image(LINES[0]))
    down.write_bytes(text_image(LINES[1], rotate=True, fmt="JPEG"))
    webp = text_image(LINES[2], rotate=True, fmt="WEBP")
    pil = rendered(LINES[3], rotate=False)
    pixels = np.asarray(rendered(LINES[0], rotate=True))
    result = client.classify("ppocr_dir", [str(up), down, webp, pil, pixels], top_k=1)
    assert list(result.labels[:, 0]) == ["0", "180", "180", "0", "180"]
    assert result.labels.shape == (5, 1)
    assert [result.describe(i) for i in range(5)] == [
        "up.png",
        "down.jpg",
        f"{len(webp)} bytes",
        f"image {pil.width}x{pil.height}",
        f"array {list(pixels.shape)}",
    ]


def test_one_image_is_one_input(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "line.png"
    path.write_bytes(text_image(LINES[2], rotate=True))
    for one in (path, str(path), path.read_bytes(), rendered(LINES[2], rotate=True)):
        result = client.classify("ppocr_dir", one)
        assert len(result) == 1 and result[0][0][0] == "180"


def test_many_images_over_several_chunks_keep_their_order(
    client: Client, counter: InferCounter
) -> None:
    rotations = [i % 3 == 0 for i in range(13)]
    images = [text_image(LINES[i % 4], rotate=r) for i, r in enumerate(rotations)]
    result = client.classify("ppocr_dir", images, batch_size=4, concurrency=3)
    assert counter.calls == 4
    assert list(result.labels[:, 0]) == expected_labels(rotations)
    assert len(result.request_ids) == 4


async def test_async_classify(aclient: AsyncClient, counter: InferCounter) -> None:
    rotations = [True, False, True, False, False]
    images = [text_image(LINES[i % 4], rotate=r) for i, r in enumerate(rotations)]
    result = await aclient.classify("ppocr_dir", images, top_k=2, batch_size=2)
    assert counter.calls == 3
    assert list(result.labels[:, 0]) == expected_labels(rotations)
    texts = await aclient.classify("sentiment", ["good movie", "bad movie"], top_k=1)
    assert texts.labels.shape == (2, 1) and texts.kind == "text"


# --- texts --------------------------------------------------------------------------------------


def direct_sentiment(text: str) -> np.ndarray[Any, Any]:
    """The text classifier's softmax, run directly with tokenizers and onnxruntime."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from tests.pipelines import minilm_tokenizer_path, text_classifier_model

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
    probabilities: np.ndarray[Any, Any] = np.exp(logits[0] - logits[0].max())
    return probabilities / probabilities.sum()


def test_texts_equal_a_direct_run(client: Client) -> None:
    texts = ["what a wonderful day", "the service was slow and rude", "ok"]
    result = client.classify("sentiment", texts, top_k=3)
    assert result.kind == "text"
    for index, text in enumerate(texts):
        expected = direct_sentiment(text)
        order = np.argsort(-expected)
        assert list(result.labels[index]) == [SENTIMENT_LABELS[i] for i in order]
        np.testing.assert_allclose(result.scores[index], expected[order], rtol=1e-5)
    assert result.describe(1) == texts[1]


def test_one_text_and_top_k(client: Client) -> None:
    result = client.classify("sentiment", "what a wonderful day", top_k=2)
    assert result.labels.shape == (1, 2) and result.scores.dtype == np.float32


# --- the result ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images_result(url: str) -> Classifications:
    with Client(url) as client:
        return client.classify(
            "ppocr_dir", [text_image(LINES[0]), rendered(LINES[1], rotate=True)], top_k=2
        )


def test_to_pandas(images_result: Classifications) -> None:
    frame = images_result.to_pandas()
    assert list(frame.columns) == ["input", "rank", "label", "score"]
    assert frame["input"].tolist() == [0, 0, 1, 1]
    assert frame["rank"].tolist() == [1, 2, 1, 2]
    assert frame["label"].tolist() == ["0", "180", "180", "0"]
    np.testing.assert_allclose(frame["score"], images_result.scores.reshape(-1))


def test_repr_lists_each_input(images_result: Classifications) -> None:
    text = repr(images_result)
    lines = text.splitlines()
    assert lines[0] == "Classifications of 'ppocr_dir' version 1: 2 images, top 2"
    assert re.fullmatch(r"  \[0\] '\d+ bytes': 0 \d\.\d{3}, 180 \d\.\d{3}", lines[1])
    assert re.fullmatch(r"  \[1\] 'image \d+x\d+': 180 \d\.\d{3}, 0 \d\.\d{3}", lines[2])


def test_repr_of_many_inputs_is_cut(client: Client) -> None:
    result = client.classify("sentiment", [f"text {i}" for i in range(14)], top_k=1)
    lines = repr(result).splitlines()
    assert len(lines) == 12 and lines[-1] == "  … 4 more"


def test_notebook_display_shows_thumbnails_with_labels(images_result: Classifications) -> None:
    page = images_result._repr_html_()
    thumbnails = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(thumbnails) == 2
    for data in thumbnails:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert max(image.size) <= 96
    assert "<b>0</b>" in page and "<b>180</b>" in page
    assert "Classifications of ppocr_dir" in page


def test_notebook_display_of_texts_escapes_them(client: Client) -> None:
    page = client.classify("sentiment", ["<script>x</script>"])._repr_html_()
    assert "&lt;script&gt;" in page and "<script>" not in page and "<img" not in page


def test_thumbnails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    png = text_image("thumb")
    path = tmp_path / "x.png"
    path.write_bytes(png)
    for source in (png, path, str(path), rendered("thumb", False), np.zeros((50, 400), np.uint8)):
        uri = thumbnail_uri(source)
        assert uri is not None and uri.startswith("data:image/png;base64,")
    assert thumbnail_uri(b"not an image") is None
    assert thumbnail_uri(tmp_path / "missing.png") is None
    monkeypatch.setitem(sys.modules, "PIL", None)  # Pillow missing: small images as they are
    assert thumbnail_uri(png) == "data:image/png;base64," + base64.b64encode(png).decode()
    assert thumbnail_uri(b"\xff\xd8\xff" + bytes(300_000)) is None


def test_images_are_encoded_as_png_whatever_their_mode() -> None:
    cmyk = Image.new("CMYK", (6, 4), (0, 255, 0, 0))
    grey = np.linspace(0.0, 1.0, 24).reshape(4, 6, 1)
    inputs = task_inputs([cmyk, grey, np.zeros((4, 6, 4), np.uint8)], "image", "m")
    decoded = [Image.open(io.BytesIO(data)) for data in inputs.encode(0, 3)]
    assert [(image.format, image.mode, image.size) for image in decoded] == [
        ("PNG", "RGB", (6, 4)),
        ("PNG", "L", (6, 4)),
        ("PNG", "RGBA", (6, 4)),
    ]
    assert decoded[1].getpixel((5, 3)) == 255 and decoded[1].getpixel((0, 0)) == 0


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("empty", [[], (), iter([])])
def test_no_inputs_is_a_clear_error(client: Client, counter: InferCounter, empty: Any) -> None:
    with pytest.raises(InputError, match="classify needs at least one input"):
        client.classify("ppocr_dir", empty)
    with pytest.raises(InputError, match="classify needs at least one input"):
        client.classify("sentiment", empty)
    assert counter.calls == 0


async def test_no_inputs_async(aclient: AsyncClient) -> None:
    with pytest.raises(InputError, match="at least one input"):
        await aclient.classify("ppocr_dir", [])


def test_a_missing_image_file(client: Client, counter: InferCounter, tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        client.classify("ppocr_dir", [text_image("x"), "a photo of a cat"])
    message = str(info.value)
    assert "input 1" in message and "'a photo of a cat' does not exist" in message
    with pytest.raises(InputError, match="is a folder"):
        client.classify("ppocr_dir", tmp_path)
    assert counter.calls == 0


def test_what_a_text_classifier_does_not_take(client: Client, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="classifies texts, not a"):
        client.classify("sentiment", tmp_path / "review.txt")
    with pytest.raises(InputError, match="classifies texts, not a Image"):
        client.classify("sentiment", rendered("x", False))
    with pytest.raises(InputError, match="input 1 is a int"):
        client.classify("sentiment", ["fine", 1])


def test_what_an_image_classifier_does_not_take(client: Client) -> None:
    with pytest.raises(InputError, match="input 0 is a dict"):
        client.classify("ppocr_dir", [{"image": b""}])
    with pytest.raises(InputError, match="1, 3 or 4 channels"):
        client.classify("ppocr_dir", np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(InputError, match="values from 0 to 1"):
        client.classify("ppocr_dir", np.full((8, 8), 7.0))


def test_a_model_that_is_not_a_classifier(client: Client) -> None:
    with pytest.raises(InputError, match="'minilm' is a model of task 'embedding'; classify needs"):
        client.classify("minilm", ["hello"])


def test_top_k_must_be_positive(client: Client) -> None:
    for top_k in (0, -1, True):
        with pytest.raises(ValueError, match="top_k must be a positive integer"):
            client.classify("sentiment", ["x"], top_k=top_k)


def test_a_corrupt_image_is_refused_by_the_server(client: Client) -> None:
    good = text_image("fine")
    with pytest.raises(BadRequestError) as info:
        client.classify("ppocr_dir", [good, good[:40]])
    assert "input 'image'" in str(info.value) and "element 1" in str(info.value)


def test_an_image_over_the_pixel_limit(client: Client) -> None:
    out = io.BytesIO()
    Image.new("L", (8000, 6000), "white").save(out, format="PNG")
    with pytest.raises(PayloadTooLargeError, match="48000000 pixels"):
        client.classify("ppocr_dir", out.getvalue())


# --- answers the client checks (a scripted server) ----------------------------------------------

CLASSIFIER = {
    "name": "other",
    "versions": ["1"],
    "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
    "outputs": [
        {"name": "label", "datatype": "BYTES", "shape": [-1, -1]},
        {"name": "score", "datatype": "FP32", "shape": [-1, -1]},
    ],
}


def _route(router: respx.Router, outputs: list[dict[str, Any]]) -> respx.Route:
    router.get("/v2/models/other").respond(json=CLASSIFIER)
    router.get("/v2/models/other/config").respond(404, json={"error": "no config"})
    return router.post("/v2/models/other/infer").respond(
        json={"model_name": "other", "model_version": "1", "outputs": outputs}
    )


def test_a_server_without_tasks_in_its_metadata(
    routed_client: ClientFactory, router: respx.Router
) -> None:
    route = _route(
        router,
        [
            {"name": "label", "datatype": "BYTES", "shape": [2, 1], "data": ["cat", "dog"]},
            {"name": "score", "datatype": "FP32", "shape": [2, 1], "data": [0.9, 0.8]},
        ],
    )
    result = routed_client().classify("other", [b"\x89PNG one", b"\x89PNG two"], top_k=1)
    assert result[:] == [[("cat", pytest.approx(0.9))], [("dog", pytest.approx(0.8))]]
    sent = route.calls[0].request
    assert b'"top_k":1' in sent.content.replace(b" ", b"")


def test_labels_and_scores_that_do_not_match(
    routed_client: ClientFactory, router: respx.Router
) -> None:
    _route(
        router,
        [
            {"name": "label", "datatype": "BYTES", "shape": [1, 2], "data": ["cat", "dog"]},
            {"name": "score", "datatype": "FP32", "shape": [1, 1], "data": [0.9]},
        ],
    )
    with pytest.raises(APIError, match=r"labels \[1, 2\] and scores \[1, 1\] for 1 inputs"):
        routed_client().classify("other", b"\x89PNG")
