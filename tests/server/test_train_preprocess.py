"""Preprocessing learnt from the training rows and exported inside the ONNX graph: the graph
takes the dataset's own columns raw (one input per column, named after it, in the datatype a
client sends) and gives what the scikit-learn pipeline gives."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime
import pytest
from sklearn.datasets import load_diabetes, load_digits
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline

from maas_server.train_engine import served_input
from maas_server.train_export import sklearn_model
from maas_server.train_preprocess import (
    FeatureColumn,
    FeatureError,
    build_preprocessor,
    check_categories,
    feature_matrix,
    input_names,
    plan_features,
)


def _session(data: bytes) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])


def _run(
    data: bytes, features: list[FeatureColumn], columns: dict[str, np.ndarray[Any, Any]]
) -> dict[str, np.ndarray[Any, Any]]:
    session = _session(data)
    feed = {f.input_name: served_input(f, columns[f.column]) for f in features}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feed), strict=True))


def _mixed_table(rows: int = 200) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(0)
    age = rng.normal(40, 10, rows)
    age[rng.random(rows) < 0.15] = np.nan
    colour = np.array([str(c) for c in rng.choice(["red", "green", "blue"], rows)], dtype=object)
    colour[rng.random(rows) < 0.15] = None
    children = rng.integers(0, 4, rows)
    signal = np.nan_to_num(age, nan=40.0) / 10 + (colour == "red") * 2 + children
    label = np.where(signal > np.median(signal), "yes", "no").astype(object)
    return {"age (years)": age, "colour": colour, "children": children, "bought": label}


MIXED_SCHEMA = [
    ("age (years)", "FP64", []),
    ("colour", "BYTES", []),
    ("children", "INT64", []),
    ("bought", "BYTES", []),
]


def test_plan_names_inputs_after_columns_and_picks_datatypes() -> None:
    features = plan_features(MIXED_SCHEMA, "bought")
    assert [(f.column, f.input_name, f.kind, f.datatype) for f in features] == [
        ("age (years)", "age (years)", "numeric", "FP32"),
        ("colour", "colour", "categorical", "BYTES"),
        ("children", "children", "numeric", "INT64"),
    ]
    image = plan_features([("image", "UINT8", [8, 8]), ("digit", "INT64", [])], "digit")
    assert image[0].shape == (8, 8) and image[0].width == 64 and image[0].datatype == "INT64"


def test_input_names_change_only_what_cannot_be_a_name() -> None:
    assert input_names(["a b", "label", "x\ny", "", "label_input"]) == [
        "a b",
        "label_input",
        "x_y",
        "column",
        "label_input_2",
    ]


@pytest.mark.parametrize(
    ("schema", "target", "features", "message"),
    [
        ([("x", "FP32", [])], "y", None, "target column 'y' is not in the dataset"),
        ([("x", "FP32", []), ("y", "INT64", [])], "y", ["z"], "feature column 'z' is not in"),
        ([("x", "FP32", []), ("y", "INT64", [])], "y", ["y"], "cannot also be a feature"),
        ([("y", "INT64", [])], "y", None, "no column besides the target"),
        (
            [("tags", "BYTES", [3]), ("y", "INT64", [])],
            "y",
            None,
            "column 'tags' holds arrays of text",
        ),
    ],
)
def test_plan_refuses_what_cannot_be_learnt(
    schema: list[tuple[str, str, list[int]]], target: str, features: Any, message: str
) -> None:
    with pytest.raises(FeatureError, match=message):
        plan_features(schema, target, features)


def test_too_many_categories_is_refused() -> None:
    features = plan_features([("id", "BYTES", []), ("y", "INT64", [])], "y")
    columns = {"id": np.array([f"user-{i}" for i in range(50)], dtype=object)}
    check_categories(columns, features, max_categories=50)
    with pytest.raises(FeatureError, match="'id' has 50 distinct text values"):
        check_categories(columns, features, max_categories=49)


def test_mixed_table_served_raw_equals_the_pipeline() -> None:
    """Missing numbers (NaN) and missing text (None, sent as ""), an int column and a column
    name with spaces: the ONNX graph gives the pipeline's probabilities and labels."""
    table = _mixed_table()
    features = plan_features(MIXED_SCHEMA, "bought")
    x = feature_matrix(table, features)
    train = np.arange(150)
    pipeline = Pipeline(
        [("preprocess", build_preprocessor(features)), ("model", LogisticRegression())]
    ).fit(x[train], table["bought"][train])
    data = sklearn_model(pipeline, features, "classification")
    session = _session(data)
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == [
        ("age (years)", "tensor(float)", ["batch"]),
        ("colour", "tensor(string)", ["batch"]),
        ("children", "tensor(int64)", ["batch"]),
    ]
    outputs = _run(data, features, table)
    assert outputs["label"].tolist() == pipeline.predict(x).tolist()
    np.testing.assert_allclose(outputs["probabilities"], pipeline.predict_proba(x), atol=1e-5)


def test_unknown_category_and_missing_values_are_handled() -> None:
    table = _mixed_table()
    features = plan_features(MIXED_SCHEMA, "bought")
    x = feature_matrix(table, features)
    preprocessor = build_preprocessor(features).fit(x)
    encoded = preprocessor.transform(x)
    assert np.isfinite(encoded).all()
    # the missing category is a column of its own; an unseen one encodes as all zeros
    unseen = {**{k: v[:2].copy() for k, v in table.items()}}
    unseen["colour"] = np.array(["purple", None], dtype=object)
    onehot = preprocessor.transform(feature_matrix(unseen, features))[:, 2:6]
    assert onehot[0].sum() == 0 and onehot[1].sum() == 1


def test_image_column_keeps_its_shape_as_one_input() -> None:
    digits = load_digits()
    columns = {"image": digits.images.astype(np.float32), "digit": digits.target}
    features = plan_features([("image", "FP32", [8, 8]), ("digit", "INT64", [])], "digit")
    x = feature_matrix(columns, features)
    pipeline = Pipeline(
        [("preprocess", build_preprocessor(features)), ("model", LogisticRegression())]
    ).fit(x[:1000], columns["digit"][:1000])
    data = sklearn_model(pipeline, features, "classification")
    (image,) = _session(data).get_inputs()
    assert (image.name, image.shape) == ("image", ["batch", 8, 8])
    outputs = _run(data, features, columns)
    assert (outputs["label"] == pipeline.predict(x)).all()


def test_regression_undoes_the_target_scaling_in_the_graph() -> None:
    diabetes = load_diabetes()
    columns = {name: diabetes.data[:, i] for i, name in enumerate(diabetes.feature_names)}
    schema = [(name, "FP64", []) for name in columns] + [("progression", "FP64", [])]
    features = plan_features(schema, "progression")
    x = feature_matrix(columns, features)
    mean, std = float(diabetes.target.mean()), float(diabetes.target.std())
    pipeline = Pipeline([("preprocess", build_preprocessor(features)), ("model", Ridge())]).fit(
        x, (diabetes.target - mean) / std
    )
    data = sklearn_model(pipeline, features, "regression", target_scale=(mean, std))
    (output,) = _session(data).get_outputs()
    assert (output.name, output.shape) == ("prediction", ["batch"])
    predicted = _run(data, features, columns)["prediction"]
    np.testing.assert_allclose(predicted, pipeline.predict(x) * std + mean, rtol=1e-4)
