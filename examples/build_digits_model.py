"""Train a digit classifier on scikit-learn's bundled 8x8 digits and export it to ONNX.

Run from the repository root::

    python examples/build_digits_model.py

It trains an MLP 64-128-64-10 (``sklearn.neural_network.MLPClassifier``), writes the
graph by hand with ``onnx.helper`` (no skl2onnx) and produces the model repository entry
``examples/model_repository/digits/``:

- ``1/model.onnx``: input ``input`` FP32 ``["batch", 64]`` holding raw pixel values
  0..16 (the division by 16 is done inside the graph); outputs ``probabilities`` FP32
  ``["batch", 10]`` (softmax) and ``label`` INT64 ``["batch"]`` (argmax).
- ``config.json`` and ``labels.txt`` (``zero`` .. ``nine``).

The build is deterministic (fixed seeds, no network).  It prints the held-out accuracy
and checks that onnxruntime's predictions equal scikit-learn's on the test split.
"""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

REPOSITORY = pathlib.Path(__file__).resolve().parent / "model_repository"
MODEL_NAME = "digits"
LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CONFIG = {"max_batch_size": 1024, "labels": "labels.txt", "warmup": 2}
PIXEL_MAX = 16.0
OPSET = 17
IR_VERSION = 8


def train() -> tuple[MLPClassifier, np.ndarray, np.ndarray]:
    """Fit the MLP on 75% of the digits; return it with the held-out pixels and targets."""
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.25, random_state=0
    )
    clf = MLPClassifier(hidden_layer_sizes=(128, 64), random_state=0, max_iter=300)
    clf.fit(x_train / PIXEL_MAX, y_train)  # converges after ~160 Adam epochs
    return clf, x_test, y_test


def to_onnx(clf: MLPClassifier) -> onnx.ModelProto:
    """Export a fitted ReLU/softmax ``MLPClassifier`` as an ONNX graph built with onnx.helper."""
    if clf.activation != "relu" or clf.out_activation_ != "softmax":
        raise ValueError("only relu hidden layers with a softmax output are supported")
    nodes = [helper.make_node("Div", ["input", "pixel_max"], ["scaled"], name="scale")]
    inits = [numpy_helper.from_array(np.array(PIXEL_MAX, dtype=np.float32), "pixel_max")]
    prev = "scaled"
    last = len(clf.coefs_) - 1
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_, strict=True)):
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"W{i}"))
        inits.append(numpy_helper.from_array(b.astype(np.float32), f"B{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"matmul{i}"], name=f"fc{i}"))
        out = "logits" if i == last else f"dense{i}"
        nodes.append(helper.make_node("Add", [f"matmul{i}", f"B{i}"], [out], name=f"bias{i}"))
        if i != last:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"], name=f"relu{i}"))
            prev = f"relu{i}"
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
    nodes.append(helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0))
    n_in, n_out = clf.coefs_[0].shape[0], clf.coefs_[-1].shape[1]
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", n_in])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", n_out]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="maas-examples",
        doc_string="MLP 64-128-64-10 on sklearn digits; input is raw pixels 0..16.",
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def write_repository(model: onnx.ModelProto, root: pathlib.Path) -> pathlib.Path:
    """Write ``<root>/digits/{1/model.onnx,config.json,labels.txt}``; return the model dir."""
    model_dir = root / MODEL_NAME
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "1" / "model.onnx").write_bytes(model.SerializeToString())
    (model_dir / "config.json").write_text(json.dumps(CONFIG) + "\n")
    (model_dir / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return model_dir


def verify(model_path: pathlib.Path, clf: MLPClassifier, x_test: np.ndarray) -> None:
    """Check that onnxruntime on the saved file predicts exactly what scikit-learn predicts."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    probabilities, label = sess.run(None, {"input": x_test.astype(np.float32)})
    expected = clf.predict(x_test / PIXEL_MAX)
    assert label.dtype == np.int64 and label.shape == (len(x_test),)
    assert np.array_equal(label, expected), "onnxruntime and scikit-learn disagree"
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        probabilities, clf.predict_proba(x_test / PIXEL_MAX), rtol=1e-3, atol=1e-5
    )


def main() -> None:
    """Train, export, write and verify the digits model."""
    start = time.perf_counter()
    clf, x_test, y_test = train()
    accuracy = float((clf.predict(x_test / PIXEL_MAX) == y_test).mean())
    model = to_onnx(clf)
    model_dir = write_repository(model, REPOSITORY)
    model_path = model_dir / "1" / "model.onnx"
    verify(model_path, clf, x_test)
    if accuracy <= 0.95:
        raise SystemExit(f"test accuracy {accuracy:.4f} is too low")
    size_kb = model_path.stat().st_size / 1024
    print(f"test accuracy: {accuracy:.4f} on {len(y_test)} held-out digits")
    print(f"wrote {model_path} ({size_kb:.1f} KiB) in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
