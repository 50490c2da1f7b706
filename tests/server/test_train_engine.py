"""One training in this process (the child's work, without the child): epochs, early stopping,
held-out metrics, divergence, cancel, determinism and both engines' ONNX export."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
from sklearn.datasets import load_diabetes, load_digits

from maas_server.train_engine import (
    ESTIMATOR_FILE,
    MODEL_FILE,
    TrainingCancelled,
    TrainingFailed,
    split_rows,
    train,
)
from maas_server.train_params import ParamError, TrainingParams
from maas_server.train_preprocess import FeatureColumn, FeatureError, plan_features


def _digits() -> tuple[dict[str, np.ndarray[Any, Any]], list[FeatureColumn]]:
    digits = load_digits()
    columns = {"image": digits.images.astype(np.float32), "digit": digits.target}
    features = plan_features([("image", "FP32", [8, 8]), ("digit", "INT64", [])], "digit")
    return columns, features


def _diabetes() -> tuple[dict[str, np.ndarray[Any, Any]], list[FeatureColumn]]:
    diabetes = load_diabetes()
    columns = {name: diabetes.data[:, i] for i, name in enumerate(diabetes.feature_names)}
    columns["progression"] = diabetes.target
    schema = [(name, "FP64", []) for name in columns]
    return columns, plan_features(schema, "progression")


def _train(
    tmp_path: Path,
    columns: dict[str, np.ndarray[Any, Any]],
    features: list[FeatureColumn],
    target: str,
    task: str,
    stop: Any = None,
    **spec: Any,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    params = TrainingParams.from_spec({"dataset": "d", "target": target, "name": "m", **spec})
    epochs: list[dict[str, Any]] = []

    def emit(type_: str, data: Any) -> None:
        assert type_ == "epoch"
        epochs.append(dict(data))

    datatype = "INT64" if task == "classification" else "FP64"
    result = train(
        params,
        features,
        (datatype, columns[target]),
        columns,
        tmp_path,
        task=task,
        emit=emit,
        should_stop=stop or (lambda: False),
    )
    return result, epochs


def _served(path: Path, feed: dict[str, np.ndarray[Any, Any]]) -> dict[str, Any]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feed), strict=True))


def test_digits_mlp_learns_and_exports_what_it_learnt(tmp_path: Path) -> None:
    columns, features = _digits()
    result, epochs = _train(tmp_path, columns, features, "digit", "classification", epochs=40)
    assert [e["epoch"] for e in epochs] == list(range(1, len(epochs) + 1))
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert all(e["metric"] == "accuracy" and 0 <= e["val_metric"] <= 1 for e in epochs)
    metrics = result["metrics"]
    assert metrics["accuracy"] >= 0.95
    assert metrics["macro_f1"] >= 0.95
    matrix = np.array(metrics["confusion_matrix"]["matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == result["rows"]["test"] == 360
    assert result["rows"] == {"train": 1257, "validation": 180, "test": 360, "without_target": 0}
    # the exported graph takes the raw image and gives the estimator's answers
    with (tmp_path / ESTIMATOR_FILE).open("rb") as source:
        kept = pickle.load(source)
    rows = kept["test_rows"]
    served = _served(tmp_path / MODEL_FILE, {"image": columns["image"][rows]})
    x = columns["image"][rows].reshape(len(rows), 64).astype(np.float64)
    assert served["label"].tolist() == kept["estimator"].predict(x).tolist()
    np.testing.assert_allclose(
        served["probabilities"], kept["estimator"].predict_proba(x), atol=1e-5
    )


def test_early_stopping_keeps_the_best_epoch(tmp_path: Path) -> None:
    columns, features = _digits()
    result, epochs = _train(
        tmp_path, columns, features, "digit", "classification", epochs=200, patience=3
    )
    assert len(epochs) < 200
    lowest = min(e["val_loss"] for e in epochs)
    kept = epochs[result["best_epoch"] - 1]
    assert kept["val_loss"] <= lowest + 1e-4  # an improvement is one by more than 1e-4
    assert len(epochs) - result["best_epoch"] == 3  # stopped after 3 epochs without one


def test_regression_reports_rmse_mae_r2(tmp_path: Path) -> None:
    columns, features = _diabetes()
    result, epochs = _train(
        tmp_path, columns, features, "progression", "regression", epochs=30, hidden_layers=[32]
    )
    assert epochs[0]["metric"] == "r2"
    metrics = result["metrics"]
    assert set(metrics) >= {"rmse", "mae", "r2"}
    assert metrics["r2"] > 0.2  # a noisy target: Ridge gets 0.33 on this split, the mean 0
    assert metrics["rmse"] >= metrics["mae"] > 0
    feed = {f.input_name: columns[f.column].astype(np.float32) for f in features}
    served = _served(tmp_path / MODEL_FILE, feed)["prediction"]
    assert served.shape == (442,)
    assert 25 < float(np.mean(served)) < 350  # the target's units, not standardised ones


def test_linear_models_train_in_one_step(tmp_path: Path) -> None:
    columns, features = _digits()
    result, epochs = _train(tmp_path, columns, features, "digit", "classification", model="linear")
    assert len(epochs) == 1 and result["metrics"]["accuracy"] > 0.9
    columns, features = _diabetes()
    result, epochs = _train(
        tmp_path / "ridge", columns, features, "progression", "regression", model="linear"
    )
    assert len(epochs) == 1 and result["metrics"]["r2"] > 0.3


def test_binary_classification_reports_roc_auc(tmp_path: Path) -> None:
    columns, features = _digits()
    columns = {**columns, "digit": (columns["digit"] >= 5).astype(np.int64)}
    result, _ = _train(tmp_path, columns, features, "digit", "classification", epochs=5)
    assert 0.9 < result["metrics"]["roc_auc"] <= 1.0
    assert result["classes"] == [0, 1]


def test_divergence_fails_with_that_reason(tmp_path: Path) -> None:
    columns, features = _diabetes()
    with pytest.raises(TrainingFailed, match=r"training diverged: the .* loss is not finite"):
        _train(
            tmp_path,
            columns,
            features,
            "progression",
            "regression",
            epochs=20,
            optimizer="sgd",
            learning_rate=10.0,
        )


def test_cancel_stops_before_the_next_epoch(tmp_path: Path) -> None:
    columns, features = _digits()
    seen: list[int] = []

    def stop() -> bool:
        seen.append(1)
        return len(seen) > 3  # asked before each epoch: three epochs, then stop

    with pytest.raises(TrainingCancelled):
        _train(tmp_path, columns, features, "digit", "classification", stop=stop, epochs=50)
    assert not (tmp_path / MODEL_FILE).exists()


def test_same_seed_same_model(tmp_path: Path) -> None:
    columns, features = _digits()
    first, a = _train(tmp_path / "a", columns, features, "digit", "classification", epochs=3)
    second, b = _train(tmp_path / "b", columns, features, "digit", "classification", epochs=3)
    assert [e["train_loss"] for e in a] == [e["train_loss"] for e in b]
    assert first["metrics"] == second["metrics"]
    _, c = _train(tmp_path / "c", columns, features, "digit", "classification", epochs=3, seed=1)
    assert [e["train_loss"] for e in c] != [e["train_loss"] for e in a]


def test_split_is_seeded_stratified_and_checked() -> None:
    y = np.repeat(np.arange(4), 25)
    split = split_rows(y, "classification", 0.2, 0.2, seed=0)
    assert len(split.train) == 60 and len(split.validation) == 20 and len(split.test) == 20
    assert np.bincount(y[split.test]).tolist() == [5, 5, 5, 5]
    assert set(split.train) | set(split.validation) | set(split.test) == set(range(100))
    again = split_rows(y, "classification", 0.2, 0.2, seed=0)
    assert (again.test == split.test).all()
    with pytest.raises(FeatureError, match=r"too few for a validation split of 0\.1"):
        split_rows(np.arange(10) % 2, "classification", 0.1, 0.1, seed=0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"epochs": 0}, "'epochs' must be between 1 and 10000"),
        ({"learning_rate": 0}, "'learning_rate' must be greater than 0"),
        ({"hidden_layers": []}, "'hidden_layers' must be a list of layer widths"),
        ({"activation": "gelu"}, "'activation' must be one of relu, tanh, logistic, identity"),
        ({"validation_split": 0.7}, "'validation_split' must be greater than 0.0 and at most"),
        ({"batch_size": "big"}, "'batch_size' must be an integer"),
        ({"hiden_layers": [3]}, "unknown training parameter 'hiden_layers'"),
        ({"model": "linear", "hidden_layers": [3]}, "'hidden_layers' does not apply"),
        ({"model": "forest"}, "'model' must be one of mlp, linear"),
    ],
)
def test_parameters_out_of_range_are_named(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ParamError, match=message):
        TrainingParams.from_spec({"dataset": "d", "target": "y", "name": "m", **spec})


def test_torch_engine_trains_and_exports(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="the torch engine needs PyTorch: pip install 'maas[torch]'")
    columns, features = _digits()
    result, _ = _train(
        tmp_path, columns, features, "digit", "classification", engine="torch", epochs=40
    )
    assert result["engine"] == "torch"
    assert result["metrics"]["accuracy"] >= 0.95
    assert result["metrics"]["export_check"]["label_agreement"] == 1.0
    served = _served(tmp_path / MODEL_FILE, {"image": columns["image"][:50]})
    assert served["label"].dtype == np.int64
    np.testing.assert_allclose(served["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    columns, features = _diabetes()
    result, _ = _train(
        tmp_path / "reg",
        columns,
        features,
        "progression",
        "regression",
        engine="torch",
        epochs=20,
        hidden_layers=[32],
    )
    assert result["metrics"]["r2"] > 0.2


def test_preprocessing_is_learnt_from_the_training_split_only(tmp_path: Path) -> None:
    columns, features = _diabetes()
    _train(tmp_path, columns, features, "progression", "regression", epochs=1)
    with (tmp_path / ESTIMATOR_FILE).open("rb") as source:
        kept = pickle.load(source)
    split = split_rows(columns["progression"], "regression", 0.1, 0.2, seed=0)
    assert (kept["test_rows"] == split.test).all()
    x = np.stack([columns[f.column] for f in features], axis=1)
    scaler = kept["estimator"].named_steps["preprocess"].named_transformers_["numeric"]
    np.testing.assert_allclose(scaler.named_steps["scale"].mean_, x[split.train].mean(axis=0))
    assert not np.allclose(scaler.named_steps["scale"].mean_, x.mean(axis=0))
    mean, std = kept["target_scale"]
    target = columns["progression"][split.train]
    assert (mean, std) == (pytest.approx(target.mean()), pytest.approx(target.std()))
