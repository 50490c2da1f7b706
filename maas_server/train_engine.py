"""One training, start to end: split, preprocess, learn epoch by epoch, evaluate, export.

:func:`train` runs in the training's own process (:mod:`maas_server.train_process` starts it),
never in the server's: it takes the dataset's columns, reports each epoch through ``emit`` and
asks ``should_stop`` before each one (cancel, or the server gone). It writes ``model.onnx`` (the
preprocessing and the model in one graph, :mod:`maas_server.train_export`) and
``estimator.pkl`` (the fitted scikit-learn objects, for whoever wants to compare) to ``out_dir``
and returns what the job reports: the held-out metrics, the rows of each split and the engine.

The rows are split once, seeded: a test split (held out, for the final metrics), a validation
split (the per-epoch loss and metric, and early stopping) and the training split, stratified by
class when every class has rows enough. The preprocessing is fitted on the training split only.
A regression target is standardised with the training split's mean and deviation (the graph
undoes it). Early stopping keeps the weights of the epoch with the lowest validation loss.

Learners: ``mlp`` (scikit-learn ``MLPClassifier``/``MLPRegressor``, Adam, one ``partial_fit``
per epoch), ``linear`` (``LogisticRegression``/``Ridge``, fitted in one step, reported as one
epoch), and the PyTorch MLP (:mod:`maas_server.train_torch`).

>>> result = train(params, features, columns, out_dir, emit=print, should_stop=lambda: False)
... # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import os
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .train_export import sklearn_model
from .train_metrics import classification_metrics, regression_metrics, validation_loss
from .train_params import TrainingParams
from .train_preprocess import (
    MISSING_CATEGORY,
    FeatureColumn,
    FeatureError,
    build_preprocessor,
    feature_matrix,
)

__all__ = [
    "ESTIMATOR_FILE",
    "MAX_CLASSES",
    "MODEL_FILE",
    "Learner",
    "Split",
    "TrainingCancelled",
    "TrainingFailed",
    "check_split",
    "decide_task",
    "served_input",
    "split_rows",
    "target_values",
    "train",
]

MODEL_FILE = "model.onnx"
ESTIMATOR_FILE = "estimator.pkl"
MAX_CLASSES = 1000
_TOLERANCE = 1e-4
"""A validation loss lower than the best by less than this is no improvement."""

Emit = Callable[[str, Mapping[str, Any]], None]


class TrainingFailed(Exception):
    """The training cannot go on; the message is the job's failure reason."""


class TrainingCancelled(Exception):
    """``should_stop`` answered True before an epoch."""


@dataclass(frozen=True)
class Split:
    """Row indices of each split (into the rows whose target is known)."""

    train: np.ndarray[Any, Any]
    validation: np.ndarray[Any, Any]
    test: np.ndarray[Any, Any]


# --- the target ---------------------------------------------------------------------------------


def _missing(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    if values.dtype.kind == "f":
        return np.asarray(np.isnan(values))
    if values.dtype == object:
        return np.array(
            [v is None or (isinstance(v, float) and math.isnan(v)) for v in values], dtype=bool
        )
    return np.zeros(len(values), dtype=bool)


def decide_task(datatype: str, values: np.ndarray[Any, Any]) -> str:
    """``classification`` for a text, bool or integer target (an integer one with at most
    :data:`MAX_CLASSES` values), else ``regression``."""
    if datatype in ("BYTES", "BOOL"):
        return "classification"
    if datatype.startswith(("INT", "UINT")):
        return "classification" if len(np.unique(values)) <= MAX_CLASSES else "regression"
    return "regression"


def target_values(
    name: str, datatype: str, values: np.ndarray[Any, Any], task: str
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """The target's known values (as the model learns them) and the mask of the rows that
    have one. FeatureError when it cannot be the target of ``task``."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise FeatureError(
            f"target column {name!r} holds arrays (shape {list(values.shape[1:])} per row); "
            "a target is one value per row"
        )
    known = ~_missing(values)
    y = values[known]
    if len(y) == 0:
        raise FeatureError(f"target column {name!r} has no values")
    if task == "regression":
        if datatype == "BYTES":
            raise FeatureError(
                f"target column {name!r} holds text, which a regression cannot predict: use "
                "task 'classification'"
            )
        return y.astype(np.float64), known
    if datatype == "BYTES":
        y = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in y], dtype=object)
    elif datatype.startswith(("FP", "BF")):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise FeatureError(
                f"target column {name!r} holds fractional numbers: use task 'regression', or "
                "integer class labels"
            )
        y = y.astype(np.int64)
    elif datatype == "BOOL":
        y = y.astype(bool)
    else:
        y = y.astype(np.int64)
    classes = np.unique(y)
    if len(classes) < 2:
        raise FeatureError(
            f"target column {name!r} has one class ({_plain(classes[0])!r}): a classifier "
            "needs at least two"
        )
    if len(classes) > MAX_CLASSES:
        raise FeatureError(
            f"target column {name!r} has {len(classes)} classes (at most {MAX_CLASSES}): use "
            "task 'regression' for a numeric target"
        )
    return y, known


def split_rows(
    y: np.ndarray[Any, Any], task: str, validation_split: float, test_split: float, seed: int
) -> Split:
    """The seeded train / validation / test split of ``len(y)`` rows. FeatureError when a
    split would be empty (or, stratified, hold fewer rows than there are classes)."""
    from sklearn.model_selection import train_test_split

    classes = len(np.unique(y)) if task == "classification" else 0
    check_split(len(y), classes, validation_split, test_split)
    rows = len(y)
    n_test = math.ceil(rows * test_split)
    n_validation = math.ceil(rows * validation_split)
    index = np.arange(rows)
    stratify = y if task == "classification" and _stratifiable(y) else None
    rest, test = train_test_split(index, test_size=n_test, random_state=seed, stratify=stratify)
    rest_y = y[rest]
    stratify = rest_y if stratify is not None and _stratifiable(rest_y) else None
    train_rows, validation = train_test_split(
        rest, test_size=n_validation, random_state=seed, stratify=stratify
    )
    return Split(np.sort(train_rows), np.sort(validation), np.sort(test))


def check_split(rows: int, classes: int, validation_split: float, test_split: float) -> None:
    """FeatureError when ``rows`` (with a target) are too few for the splits: each split
    needs a row, and one per class (``classes``; 0 for a regression)."""
    n_test = math.ceil(rows * test_split)
    n_validation = math.ceil(rows * validation_split)
    needed = max(1, classes)
    if n_test < needed or n_validation < needed or rows - n_test - n_validation < needed:
        smallest = min(test_split, validation_split, 1 - test_split - validation_split)
        least = math.ceil(needed / smallest) if smallest > 0 else None
        raise FeatureError(
            f"the dataset has {rows} rows with a target: too few for a validation split of "
            f"{validation_split} and a test split of {test_split}"
            + (f" with {classes} classes" if classes > 1 else "")
            + (f" (it needs at least {least} rows)" if least else "")
        )


def _stratifiable(y: np.ndarray[Any, Any]) -> bool:
    _, counts = np.unique(y, return_counts=True)
    return bool(counts.min() >= 2)


# --- learners -----------------------------------------------------------------------------------


class Learner(Protocol):
    """A model that learns one epoch at a time (see the module's documentation)."""

    engine: str
    engine_version: str

    def epoch(self) -> float:
        """One pass over the training split; the epoch's training loss."""
        ...

    def predict(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Class probabilities ``[rows, classes]``, or the standardised prediction ``[rows]``."""
        ...

    def snapshot(self) -> Any: ...

    def restore(self, state: Any) -> None: ...

    def export(
        self,
        preprocessor: Any,
        features: Sequence[FeatureColumn],
        task: str,
        target_scale: tuple[float, float] | None,
        metadata: Mapping[str, Any],
    ) -> bytes:
        """The ONNX model: the fitted preprocessing and this model in one graph."""
        ...

    def estimator(self, preprocessor: Any) -> Any:
        """A picklable object to keep beside the model (scikit-learn: the whole pipeline)."""
        ...


class SklearnMLP:
    """scikit-learn's MLP (Adam, or SGD with momentum), one ``partial_fit`` per epoch."""

    def __init__(
        self,
        params: TrainingParams,
        task: str,
        x: np.ndarray[Any, Any],
        y: np.ndarray[Any, Any],
        classes: np.ndarray[Any, Any] | None,
    ) -> None:
        import sklearn
        from sklearn.neural_network import MLPClassifier, MLPRegressor

        self.engine, self.engine_version = "scikit-learn", str(sklearn.__version__)
        options: dict[str, Any] = {
            "hidden_layer_sizes": params.hidden_layers,
            "activation": params.activation,
            "solver": params.optimizer,
            "momentum": 0.9,
            "alpha": params.weight_decay,
            "batch_size": min(params.batch_size, len(x)),
            "learning_rate_init": params.learning_rate,
            "random_state": params.seed,
            "shuffle": True,
        }
        self.model: Any = (
            MLPClassifier(**options) if task == "classification" else MLPRegressor(**options)
        )
        self.task, self.x, self.y, self.classes = task, x, y, classes

    def epoch(self) -> float:
        try:
            if self.classes is not None:
                self.model.partial_fit(self.x, self.y, classes=self.classes)
            else:
                self.model.partial_fit(self.x, self.y)
        except ValueError as exc:
            if "non-finite" in str(exc):
                return math.nan
            raise
        return float(self.model.loss_)

    def predict(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        if self.task == "classification":
            return np.asarray(self.model.predict_proba(x))
        return np.asarray(self.model.predict(x)).reshape(-1)

    def snapshot(self) -> Any:
        return copy.deepcopy((self.model.coefs_, self.model.intercepts_))

    def restore(self, state: Any) -> None:
        self.model.coefs_, self.model.intercepts_ = copy.deepcopy(state)

    def estimator(self, preprocessor: Any) -> Any:
        from sklearn.pipeline import Pipeline

        return Pipeline([("preprocess", preprocessor), ("model", self.model)])

    def export(
        self,
        preprocessor: Any,
        features: Sequence[FeatureColumn],
        task: str,
        target_scale: tuple[float, float] | None,
        metadata: Mapping[str, Any],
    ) -> bytes:
        return sklearn_model(
            self.estimator(preprocessor),
            features,
            task,
            target_scale=target_scale,
            metadata=metadata,
        )


class LinearModel(SklearnMLP):
    """``LogisticRegression`` (weight decay: ``C = 1 / weight_decay``) or ``Ridge``
    (``alpha = weight_decay``), fitted in one step."""

    def __init__(
        self,
        params: TrainingParams,
        task: str,
        x: np.ndarray[Any, Any],
        y: np.ndarray[Any, Any],
        classes: np.ndarray[Any, Any] | None,
    ) -> None:
        import sklearn
        from sklearn.linear_model import LogisticRegression, Ridge

        self.engine, self.engine_version = "scikit-learn", str(sklearn.__version__)
        decay = params.weight_decay
        if task == "classification":
            c = 1.0 / decay if decay > 0 else 1e12
            self.model = LogisticRegression(C=c, max_iter=1000, random_state=params.seed)
        else:
            self.model = Ridge(alpha=decay, random_state=params.seed)
        self.task, self.x, self.y, self.classes = task, x, y, classes

    def epoch(self) -> float:
        self.model.fit(self.x, self.y)
        predicted = self.predict(self.x)
        return validation_loss(self.task, self.y, predicted, self.classes)

    def snapshot(self) -> Any:
        return None

    def restore(self, state: Any) -> None:
        pass


def _learner(
    params: TrainingParams,
    task: str,
    x: np.ndarray[Any, Any],
    y: np.ndarray[Any, Any],
    classes: np.ndarray[Any, Any] | None,
) -> Learner:
    if params.engine == "torch":
        from .train_torch import TorchMLP

        return TorchMLP(params, task, x, y, classes)
    if params.model == "linear":
        return LinearModel(params, task, x, y, classes)
    return SklearnMLP(params, task, x, y, classes)


# --- the training -------------------------------------------------------------------------------


def train(
    params: TrainingParams,
    features: Sequence[FeatureColumn],
    target: tuple[str, np.ndarray[Any, Any]],
    columns: Mapping[str, np.ndarray[Any, Any]],
    out_dir: Path,
    *,
    task: str,
    emit: Emit,
    should_stop: Callable[[], bool],
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train, evaluate and export (see the module's documentation). ``target``: the target
    column's datatype and values. Raises TrainingFailed (divergence: the reason names it) or
    TrainingCancelled."""
    started = time.monotonic()
    datatype, values = target
    y_all, known = target_values(params.target, datatype, values, task)
    x_all = feature_matrix(
        {f.column: np.asarray(columns[f.column])[known] for f in features}, features
    )
    split = split_rows(y_all, task, params.validation_split, params.test_split, params.seed)
    classes = np.unique(y_all) if task == "classification" else None

    preprocessor = build_preprocessor(features).fit(x_all[split.train])
    x_train, x_val, x_test = (
        np.asarray(preprocessor.transform(x_all[rows]), dtype=np.float64)
        for rows in (split.train, split.validation, split.test)
    )
    y_train, y_val, y_test = y_all[split.train], y_all[split.validation], y_all[split.test]
    target_scale: tuple[float, float] | None = None
    fit_y = y_train
    if task == "regression":
        deviation = float(np.std(y_train)) or 1.0
        target_scale = (float(np.mean(y_train)), deviation)
        fit_y = (y_train - target_scale[0]) / deviation
        val_y = (y_val - target_scale[0]) / deviation
    else:
        val_y = y_val

    learner = _learner(params, task, x_train, fit_y, classes)
    epochs = 1 if params.model == "linear" else params.epochs
    best_loss, best_epoch, best_state, waited = math.inf, 0, None, 0
    done = 0
    for epoch in range(1, epochs + 1):
        if should_stop():
            raise TrainingCancelled()
        with np.errstate(all="ignore"):  # on the way to divergence: reported below
            train_loss = learner.epoch()
            predicted = learner.predict(x_val)
        if not math.isfinite(train_loss):
            raise TrainingFailed(
                f"training diverged: the training loss is not finite ({train_loss}) at epoch "
                f"{epoch}; try a lower learning_rate"
            )
        val_loss = validation_loss(task, val_y, predicted, classes)
        if not math.isfinite(val_loss):
            raise TrainingFailed(
                f"training diverged: the validation loss is not finite ({val_loss}) at epoch "
                f"{epoch}; try a lower learning_rate"
            )
        val_metric, metric = _epoch_metric(task, y_val, predicted, classes, target_scale)
        done = epoch
        emit(
            "epoch",
            {
                "epoch": epoch,
                "epochs": epochs,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_metric": val_metric,
                "metric": metric,
                "elapsed_s": round(time.monotonic() - started, 3),
            },
        )
        if val_loss < best_loss - _TOLERANCE:
            best_loss, best_epoch, waited = val_loss, epoch, 0
            if params.early_stopping:
                best_state = learner.snapshot()
        else:
            waited += 1
            if params.early_stopping and waited >= params.patience:
                break
    if params.early_stopping and best_state is not None and best_epoch != done:
        learner.restore(best_state)
    if should_stop():
        raise TrainingCancelled()

    predicted = learner.predict(x_test)
    metrics = _held_out(task, y_test, predicted, classes, target_scale)
    provenance = dict(metadata or {})
    onnx_bytes = learner.export(preprocessor, features, task, target_scale, provenance)
    check = _export_check(
        onnx_bytes, features, columns, known, split, task, predicted, target_scale
    )
    metrics["export_check"] = check
    out_dir.mkdir(parents=True, exist_ok=True)
    _write(out_dir / MODEL_FILE, onnx_bytes)
    _write(
        out_dir / ESTIMATOR_FILE,
        pickle.dumps(
            {
                "estimator": learner.estimator(preprocessor),
                "target_scale": target_scale,
                "classes": classes,
                "test_rows": np.flatnonzero(known)[split.test],
            }
        ),
    )
    return {
        "model_file": MODEL_FILE,
        "metrics": metrics,
        "task": task,
        "epochs": done,
        "best_epoch": best_epoch if params.early_stopping else done,
        "rows": {
            "train": len(split.train),
            "validation": len(split.validation),
            "test": len(split.test),
            "without_target": int((~known).sum()),
        },
        "classes": [_plain(c) for c in classes] if classes is not None else None,
        "engine": learner.engine,
        "engine_version": learner.engine_version,
        "elapsed_s": round(time.monotonic() - started, 3),
    }


def _epoch_metric(
    task: str,
    y: np.ndarray[Any, Any],
    predicted: np.ndarray[Any, Any],
    classes: np.ndarray[Any, Any] | None,
    target_scale: tuple[float, float] | None,
) -> tuple[float | None, str]:
    if task == "classification":
        assert classes is not None
        labels = classes[np.argmax(predicted, axis=1)]
        return float(np.mean(labels == y)), "accuracy"
    from sklearn.metrics import r2_score

    mean, deviation = target_scale or (0.0, 1.0)
    if len(y) < 2:
        return None, "r2"
    with np.errstate(all="ignore"):
        score = float(r2_score(y, predicted * deviation + mean))
    return (score if math.isfinite(score) else None), "r2"


def _held_out(
    task: str,
    y: np.ndarray[Any, Any],
    predicted: np.ndarray[Any, Any],
    classes: np.ndarray[Any, Any] | None,
    target_scale: tuple[float, float] | None,
) -> dict[str, Any]:
    if task == "classification":
        assert classes is not None
        return classification_metrics(
            y, classes[np.argmax(predicted, axis=1)], predicted, list(classes)
        )
    mean, deviation = target_scale or (0.0, 1.0)
    return regression_metrics(y, predicted * deviation + mean)


def _export_check(
    onnx_bytes: bytes,
    features: Sequence[FeatureColumn],
    columns: Mapping[str, np.ndarray[Any, Any]],
    known: np.ndarray[Any, Any],
    split: Split,
    task: str,
    predicted: np.ndarray[Any, Any],
    target_scale: tuple[float, float] | None,
) -> dict[str, Any]:
    """Run the exported graph on the test split's raw columns and compare it with the
    trained model: TrainingFailed when they disagree (an export fault)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    rows = np.flatnonzero(known)[split.test]
    feed = {f.input_name: served_input(f, np.asarray(columns[f.column])[rows]) for f in features}
    outputs = dict(
        zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True)
    )
    if task == "classification":
        difference = float(np.max(np.abs(outputs["probabilities"] - predicted)))
        same = float(
            np.mean(np.argmax(outputs["probabilities"], axis=1) == np.argmax(predicted, axis=1))
        )
        check = {"max_abs_diff": difference, "label_agreement": same}
        bad = difference > 1e-3
    else:
        mean, deviation = target_scale or (0.0, 1.0)
        expected = predicted * deviation + mean
        difference = float(np.max(np.abs(outputs["prediction"] - expected)))
        scale = float(np.max(np.abs(expected))) or 1.0
        check = {"max_abs_diff": difference, "max_rel_diff": difference / scale}
        bad = difference / scale > 1e-3
    if bad:
        raise TrainingFailed(
            f"the exported ONNX model does not reproduce the trained model on the test split "
            f"(largest difference {difference:.3g})"
        )
    return check


def served_input(feature: FeatureColumn, values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """A column's raw values as a client sends them to the served model's input."""
    rows = values.shape[0]
    shape = (rows, *feature.shape)
    if feature.datatype == "BYTES":
        out = np.empty(rows, dtype=object)
        for i, value in enumerate(values):
            missing = value is None or (isinstance(value, float) and math.isnan(value))
            out[i] = (
                MISSING_CATEGORY
                if missing
                else (value.decode() if isinstance(value, bytes) else str(value))
            )
        return out
    dtype = {"FP32": np.float32, "INT64": np.int64, "BOOL": np.bool_}[feature.datatype]
    return values.astype(dtype).reshape(shape)


def _write(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
