"""The declared steps one by one (configuration, text, image and output steps) and the load
errors a pipeline configuration that does not fit its model gets."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maas_server import Settings
from maas_server.config import ConfigError, parse_config
from maas_server.errors import BadRequestError, PayloadTooLargeError
from maas_server.image_steps import ImagePreprocessor
from maas_server.output_steps import activate, pool, top_k
from maas_server.pipeline_config import ImageSteps, TextSteps
from maas_server.text_steps import TextEncoder
from tests.pipelines import minilm_path, minilm_tokenizer_path
from tests.server.apps import asgi_app


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"pipeline": {"text": {}}}, "'pipeline' steps are for tasks"),
        ({"task": "embedding", "pipeline": {"image": {}}}, "no 'image' steps"),
        ({"task": "image-classification", "pipeline": {"text": {}}}, "no 'text' steps"),
        ({"task": "embedding", "pipeline": {"text": {"max_lenght": 3}}}, "max_lenght"),
        ({"task": "embedding", "pipeline": {"text": {"padding": 0}}}, "fixed padding"),
        ({"task": "embedding", "pipeline": {"outputs": {"pooling": "sum"}}}, "pooling"),
        (
            {"task": "image-classification", "pipeline": {"image": {"resize_mode": "pad"}}},
            "resize [height, width]",
        ),
        (
            {"task": "image-classification", "pipeline": {"image": {"mean": [1, 2]}}},
            "mean has 2 values",
        ),
        ({"task": "image-classification", "pipeline": {"image": {"std": [0]}}}, "std"),
        ({"task": "embedding", "pipeline": {"text": {"tokenizer": "../t.json"}}}, "inside"),
        ({"task": "sentiment"}, "task"),
    ],
)
def test_bad_pipeline_configurations(config: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match="invalid configuration") as caught:
        parse_config(config, "config.json")
    assert message in str(caught.value)


def test_task_defaults() -> None:
    steps = parse_config({"task": "embedding"}, "c").steps()
    assert steps is not None and steps.text is not None and steps.outputs is not None
    assert steps.text.max_length == 512 and steps.text.padding == "longest"
    assert (steps.outputs.pooling, steps.outputs.normalize) == ("mean", "l2")
    image = parse_config({"task": "image-classification"}, "c").steps()
    assert image is not None and image.image is not None and image.text is None
    assert parse_config({}, "c").steps() is None


# --- text ---------------------------------------------------------------------------------------


def _encoder(**steps: object) -> TextEncoder:
    folder = minilm_tokenizer_path().parent
    return TextEncoder.load(folder, folder, TextSteps.model_validate(steps))


def test_padding_longest_and_fixed_and_truncation() -> None:
    batch = _encoder().encode(["a", "a b c d"])
    assert batch.ids.shape == (2, 6)  # [CLS] a b c d [SEP]
    assert batch.mask.tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6]
    fixed = _encoder(padding=10, max_length=20).encode(["a"])
    assert fixed.ids.shape == (1, 10) and fixed.token_counts.tolist() == [3]
    cut = _encoder(max_length=4).encode(["a b c d e f"])
    assert cut.ids.shape == (1, 4) and cut.ids[0, -1] == 102  # still ends with [SEP]
    with pytest.raises(BadRequestError, match="element 0 has 8 tokens"):
        _encoder(max_length=4, truncation=False).check_lengths("text", ["a b c d e f"])


def test_input_names_and_int32() -> None:
    encoder = _encoder(input_ids="ids", attention_mask="mask", token_type_ids=None)
    feeds = encoder.feeds(encoder.encode(["hi"]), {"ids": "INT32", "mask": "INT64"})
    assert set(feeds) == {"ids", "mask"}
    assert feeds["ids"].dtype == np.int32 and feeds["mask"].dtype == np.int64


# --- images -------------------------------------------------------------------------------------


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def test_image_steps_nchw_mean_std() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    steps = ImageSteps(resize=[30, 40], mean=[0.5, 0.4, 0.3], std=[0.2, 0.3, 0.4])
    out = ImagePreprocessor(steps, "x", "FP32", (-1, 3, -1, -1)).batch("image", [_png(pixels)])
    expected = ((pixels / 255 - [0.5, 0.4, 0.3]) / [0.2, 0.3, 0.4]).transpose(2, 0, 1)
    assert out.shape == (1, 3, 30, 40) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], expected, atol=1e-5)


def test_image_steps_shorter_side_crop_grey_nhwc_uint8() -> None:
    pixels = np.arange(60 * 80, dtype=np.uint32).reshape(60, 80) % 256
    grey = pixels.astype(np.uint8)
    steps = ImageSteps(resize=30, center_crop=[20, 20], mode="L", scale=1.0, layout="NHWC")
    pre = ImagePreprocessor(steps, "x", "UINT8", (-1, 20, 20, 1))
    out = pre.batch("image", [_png(grey)])
    resized = np.asarray(Image.fromarray(grey).resize((40, 30), Image.Resampling.BILINEAR))
    expected = resized[5:25, 10:30]
    assert out.shape == (1, 20, 20, 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :, :, 0], expected)


def test_image_steps_take_the_model_size_and_bgr() -> None:
    pixels = np.zeros((10, 10, 3), dtype=np.uint8)
    pixels[..., 0] = 255  # red
    pre = ImagePreprocessor(ImageSteps(mode="BGR"), "x", "FP32", (-1, 3, 8, 8))
    out = pre.batch("image", [_png(pixels)])
    assert out.shape == (1, 3, 8, 8)
    assert out[0, 2].min() == pytest.approx(1.0) and out[0, 0].max() == 0.0  # red comes last


def test_exif_orientation_is_applied() -> None:
    pixels = np.zeros((10, 20, 3), dtype=np.uint8)
    pixels[:, :5] = 255  # white on the left
    exif = Image.Exif()
    exif[0x0112] = 3  # stored upside down: turn by 180 degrees
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", exif=exif, quality=100)
    steps = ImageSteps(scale=1.0, layout="NHWC")
    (upright,) = ImagePreprocessor(steps, "x", "FP32", (-1, 10, 20, 3)).batch("i", [out.getvalue()])
    assert upright[:, 15:].mean() > 200 and upright[:, :5].mean() < 50  # white on the right


def test_image_sizes_that_differ_cannot_batch() -> None:
    pre = ImagePreprocessor(ImageSteps(), "x", "FP32", (-1, 3, -1, -1))
    small, large = np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)
    with pytest.raises(BadRequestError, match="different sizes"):
        pre.batch("image", [_png(small), _png(large)])


def test_pixel_limit() -> None:
    pre = ImagePreprocessor(ImageSteps(max_pixels=99), "x", "FP32", (-1, 3, -1, -1))
    with pytest.raises(PayloadTooLargeError, match="10x10 image"):
        pre.batch("image", [_png(np.zeros((10, 10, 3), np.uint8))])


# --- outputs ------------------------------------------------------------------------------------


def test_pooling_kinds() -> None:
    hidden = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(pool(hidden, mask, "mean"), [[1, 2], [6, 7]])
    np.testing.assert_allclose(pool(hidden, mask, "max"), [[2, 3], [6, 7]])
    np.testing.assert_allclose(pool(hidden, mask, "cls"), [[0, 1], [6, 7]])


def test_activations_and_top_k() -> None:
    logits = np.array([[0.0, 2.0, 1.0]], dtype=np.float32)
    soft = activate(logits, "softmax")
    np.testing.assert_allclose(soft.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(activate(logits, "sigmoid"), 1 / (1 + np.exp(-logits)))
    labels, scores = top_k(soft, ["a", "b"], 5)  # no label for class 2: its index
    assert labels.tolist() == [[b"b", b"2", b"a"]]
    assert scores[0].tolist() == sorted(soft[0].tolist(), reverse=True)


# --- load errors --------------------------------------------------------------------------------


def _model(root: Path, name: str, config: dict[str, object], tokenizer: bool = True) -> None:
    version = root / name / "1"
    version.mkdir(parents=True)
    shutil.copyfile(minilm_path(), version / "model.onnx")
    if tokenizer:
        shutil.copyfile(minilm_tokenizer_path(), version / "tokenizer.json")
    (root / name / "config.json").write_text(json.dumps(config))


async def test_load_errors_say_what_does_not_fit(tmp_path: Path) -> None:
    _model(tmp_path, "no_tokenizer", {"task": "embedding"}, tokenizer=False)
    _model(tmp_path, "wrong_ids", {"task": "embedding", "pipeline": {"text": {"input_ids": "ids"}}})
    _model(tmp_path, "unfed", {"task": "embedding", "pipeline": {"text": {"token_type_ids": None}}})
    _model(tmp_path, "no_output", {"task": "embedding", "pipeline": {"outputs": {"output": "y"}}})
    _model(tmp_path, "image_input", {"task": "image-classification"})
    expected = {
        "no_tokenizer": "tokenizer.json is missing",
        "wrong_ids": "no input 'ids'",
        "unfed": "'token_type_ids' are not fed",
        "no_output": "names 'y'",
        "image_input": "several inputs",
    }
    async with asgi_app(Settings(repository=tmp_path), []) as (app, _):
        repository = app.state.dataplane.repository
        for name, message in expected.items():
            record = await asyncio.to_thread(repository.load, name)
            assert record.state == "UNAVAILABLE", name
            assert message in record.reason, (name, record.reason)
