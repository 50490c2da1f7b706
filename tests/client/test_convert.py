"""to_onnx: ONNX sources checked, scikit-learn and torch models converted with meaningful names.

Every converted model runs in onnxruntime and is compared with the framework's own answers; one
is served by the real server (``Client.local``) over a repository folder written by
``ConvertedModel.write``. The torch tests are skipped where torch is not installed (it is not in
the ``dev`` extra: gigabytes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits, make_classification, make_regression
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.semi_supervised import LabelSpreading

from maas_client import Client, InputError, Output
from maas_client._convert import ConvertedModel, to_onnx


def run(converted: ConvertedModel, x: np.ndarray[Any, Any]) -> dict[str, Any]:
    """The converted model's outputs for ``x``, by name, from onnxruntime itself."""
    session = ort.InferenceSession(converted.model_bytes, providers=["CPUExecutionProvider"])
    names = [value.name for value in session.get_outputs()]
    return dict(zip(names, session.run(None, {"input": x.astype(np.float32)}), strict=True))


def batch_dims(converted: ConvertedModel) -> list[str]:
    model = onnx.load_model_from_string(converted.model_bytes)
    values = (*model.graph.input, *model.graph.output)
    return [value.type.tensor_type.shape.dim[0].dim_param for value in values]


@pytest.fixture(scope="module")
def digits_split() -> tuple[np.ndarray[Any, Any], ...]:
    digits = load_digits()
    parts = train_test_split(digits.data, digits.target, test_size=0.25, random_state=0)
    return tuple(np.asarray(part) for part in parts)


@pytest.fixture(scope="module")
def digits_pipeline(digits_split: tuple[np.ndarray[Any, Any], ...]) -> Pipeline:
    x_train, _, y_train, _ = digits_split
    mlp = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0)
    return make_pipeline(StandardScaler(), mlp).fit(x_train, y_train)


def test_digits_pipeline_converts_with_the_names_of_the_bundled_example(
    digits_pipeline: Pipeline, digits_split: tuple[np.ndarray[Any, Any], ...]
) -> None:
    converted = to_onnx(digits_pipeline)
    assert converted.inputs == ("input",)
    assert converted.outputs == ("label", "probabilities")
    assert batch_dims(converted) == ["batch", "batch", "batch"]
    assert converted.framework == "sklearn"
    assert converted.converter is not None and converted.converter.startswith("skl2onnx ")
    assert converted.labels == tuple(str(d) for d in range(10))
    assert converted.feature_names is None  # fitted on an array
    _, x_test, _, _ = digits_split
    out = run(converted, x_test)
    assert out["label"].dtype == np.int64 and out["label"].shape == (len(x_test),)
    np.testing.assert_array_equal(out["label"], digits_pipeline.predict(x_test))
    assert out["probabilities"].dtype == np.float32 and out["probabilities"].shape == (
        len(x_test),
        10,
    )
    np.testing.assert_allclose(
        out["probabilities"], digits_pipeline.predict_proba(x_test), rtol=0, atol=1e-5
    )


def test_regressor_answers_prediction() -> None:
    x, y = make_regression(n_samples=200, n_features=6, noise=0.1, random_state=1)
    y = y / np.abs(y).max()  # targets of order 1, so that FP32 can hold them within 1e-5
    ridge = make_pipeline(StandardScaler(), Ridge(alpha=0.5)).fit(x, y)
    converted = to_onnx(ridge)
    assert converted.outputs == ("prediction",) and converted.labels is None
    assert batch_dims(converted) == ["batch", "batch"]
    out = run(converted, x)
    assert out["prediction"].shape == (200, 1)  # a column per target
    np.testing.assert_allclose(out["prediction"][:, 0], ridge.predict(x), rtol=0, atol=1e-5)


def test_binary_logistic_regression_with_string_classes_from_a_dataframe() -> None:
    pd = pytest.importorskip("pandas")
    x, y = make_classification(
        n_samples=300, n_features=4, n_informative=3, n_redundant=1, random_state=2
    )
    frame = pd.DataFrame(x, columns=["age", "height", "weight", "score"])
    classes = np.where(y == 1, "yes", "no")
    logistic = LogisticRegression().fit(frame, classes)
    converted = to_onnx(logistic)
    assert converted.outputs == ("label", "probabilities")
    assert converted.labels == ("no", "yes")  # the columns of probabilities, in order
    assert converted.feature_names == ("age", "height", "weight", "score")
    out = run(converted, frame.to_numpy())
    np.testing.assert_array_equal(out["label"], logistic.predict(frame))
    assert out["probabilities"].shape == (300, 2)
    np.testing.assert_allclose(
        out["probabilities"], logistic.predict_proba(frame), rtol=0, atol=1e-5
    )


def test_output_names_can_be_chosen_and_unfitted_estimators_are_refused() -> None:
    x, y = make_classification(
        n_samples=60, n_features=3, n_informative=2, n_redundant=0, random_state=3
    )
    fitted = LogisticRegression().fit(x, y)
    converted = to_onnx(fitted, input_names=["features"], output_names=["cls", "scores"])
    assert converted.inputs == ("features",) and converted.outputs == ("cls", "scores")
    with pytest.raises(InputError, match="2 output names given for 1 outputs"):
        to_onnx(Ridge().fit(x, y), output_names=["a", "b"])
    with pytest.raises(InputError, match="not fitted: call fit"):
        to_onnx(LogisticRegression())


def test_onnx_sources_pass_through_checked(tmp_path: Path) -> None:
    digits = Path(__file__).parents[2] / "examples/model_repository/digits/1/model.onnx"
    from_path = to_onnx(digits)
    assert from_path.framework == "onnx" and from_path.converter is None
    assert from_path.model_bytes == digits.read_bytes()
    assert from_path.inputs == ("input",) and from_path.outputs == ("probabilities", "label")
    assert from_path.framework_version is None  # the example's producer gives no version
    from_bytes = to_onnx(digits.read_bytes())
    from_proto = to_onnx(onnx.load(digits))
    assert from_bytes.sha256 == from_path.sha256 == from_proto.sha256
    assert from_proto.opset == 17


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\x00\x01 this is not protobuf \xff\xfe", "not an ONNX model"),
        (b"\n\x03abc", "not an ONNX model"),
    ],
)
def test_corrupt_bytes_are_an_input_error(data: bytes, reason: str) -> None:
    with pytest.raises(InputError, match=reason) as caught:
        to_onnx(data)
    assert isinstance(caught.value, ValueError)


def test_an_invalid_graph_and_bad_paths_are_input_errors(tmp_path: Path) -> None:
    # a graph whose node reads a value nothing produces: parses, but fails onnx.checker
    graph = helper.make_graph(
        [helper.make_node("Relu", ["nowhere"], ["y"])],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
    )
    broken = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "broken.onnx"
    path.write_bytes(broken.SerializeToString())
    with pytest.raises(InputError, match=r"broken\.onnx: not a valid ONNX model"):
        to_onnx(path)
    truncated = tmp_path / "truncated.onnx"
    good = Path(__file__).parents[2] / "examples/model_repository/digits/1/model.onnx"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(InputError, match=r"truncated\.onnx"):
        to_onnx(truncated)
    with pytest.raises(InputError, match="cannot read the ONNX model"):
        to_onnx(tmp_path / "missing.onnx")
    with pytest.raises(InputError, match="is a folder"):
        to_onnx(tmp_path)
    with pytest.raises(InputError, match="cannot make an ONNX model of a dict"):
        to_onnx({"weights": [1, 2]})


def test_external_data_is_refused_with_a_pointer_to_the_folder(tmp_path: Path) -> None:
    weights = numpy_helper.from_array(np.ones((256, 256), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 256])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, tmp_path / "m.onnx", save_as_external_data=True, size_threshold=0)
    with pytest.raises(InputError, match="external data files; upload its folder"):
        to_onnx(tmp_path / "m.onnx")


def test_an_estimator_skl2onnx_lacks_is_an_input_error() -> None:
    x = np.random.default_rng(4).random((20, 3))
    spreading = LabelSpreading().fit(x, np.array([0, 1] * 10))
    with pytest.raises(InputError, match=r"skl2onnx cannot convert this LabelSpreading: [^\n]+$"):
        to_onnx(spreading)


def test_a_missing_converter_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, digits_pipeline: Pipeline
) -> None:
    monkeypatch.setitem(sys.modules, "skl2onnx", None)  # what Python does when it is absent
    with pytest.raises(ImportError, match=r"pip install 'maas\[sklearn\]'"):
        to_onnx(digits_pipeline)


def test_converted_pipeline_served_end_to_end(
    tmp_path: Path, digits_pipeline: Pipeline, digits_split: tuple[np.ndarray[Any, Any], ...]
) -> None:
    converted = to_onnx(digits_pipeline)
    path = converted.write(tmp_path / "skl", version=1)
    assert path == tmp_path / "skl" / "1" / "model.onnx"
    assert json.loads((tmp_path / "skl" / "config.json").read_text()) == {
        "max_batch_size": 1024,
        "labels": "labels.txt",
    }
    assert (tmp_path / "skl" / "labels.txt").read_text().splitlines() == list("0123456789")
    _, x_test, _, _ = digits_split
    with Client.local(tmp_path, max_retries=0) as client:
        metadata = client.models.get("skl")
        assert [t.name for t in metadata.inputs] == ["input"]
        assert {t.name for t in metadata.outputs} == {"label", "probabilities"}
        result = client.infer("skl", x_test)
        np.testing.assert_array_equal(result["label"], digits_pipeline.predict(x_test))
        np.testing.assert_allclose(
            result["probabilities"], digits_pipeline.predict_proba(x_test), rtol=0, atol=1e-5
        )
        top = client.infer("skl", x_test[:3], outputs=[Output("probabilities", classification=1)])
        expected = digits_pipeline.predict(x_test[:3])
        assert [row[0].split(":")[1:] for row in top["probabilities"].astype(str)] == [
            [str(label), str(label)] for label in expected
        ]


# -- torch (not in the dev extra: skipped where it is not installed) ---------------------------


def test_torch_module_exports_with_a_dynamic_batch() -> None:
    torch = pytest.importorskip(
        "torch", reason="torch is not installed (pip install 'maas[torch]')"
    )
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    ).eval()
    converted = to_onnx(module, example_inputs=torch.randn(2, 8))
    assert converted.framework == "torch" and converted.framework_version == torch.__version__
    assert converted.inputs == ("input",) and converted.outputs == ("output",)
    assert batch_dims(converted) == ["batch", "batch"]
    session = ort.InferenceSession(converted.model_bytes, providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        x = torch.randn(batch, 8)
        (got,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            expected = module(x).numpy()
        assert got.shape == (batch, 3)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_torch_module_with_two_inputs_and_outputs_is_numbered() -> None:
    torch = pytest.importorskip(
        "torch", reason="torch is not installed (pip install 'maas[torch]')"
    )

    class Both(torch.nn.Module):
        def forward(self, a: Any, b: Any) -> tuple[Any, Any]:
            return a + b, a * b

    converted = to_onnx(Both(), example_inputs=(torch.ones(2, 3), torch.ones(2, 3)))
    assert converted.inputs == ("input_0", "input_1")
    assert converted.outputs == ("output_0", "output_1")
    with pytest.raises(InputError, match="needs example_inputs="):
        to_onnx(Both())


def test_torch_without_onnx_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip(
        "torch", reason="torch is not installed (pip install 'maas[torch]')"
    )
    monkeypatch.setitem(sys.modules, "onnx", None)  # what Python does when it is absent
    with pytest.raises(ImportError, match=r"pip install 'maas\[torch\]'"):
        to_onnx(torch.nn.Linear(2, 2), example_inputs=torch.ones(1, 2))
