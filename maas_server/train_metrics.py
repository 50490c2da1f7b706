"""Held-out metrics of a trained model: what the end of a training reports.

Classification: accuracy, macro F1, ROC AUC (binary only: one class's probability against the
other) and the confusion matrix (rows: true class, columns: predicted, in the order of
``classes``). Regression: RMSE, MAE and R². Every figure is a plain float (JSON-ready); a figure
that cannot be computed (ROC AUC when the held-out rows hold one class) is None.

>>> classification_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), proba, [0, 1])
... # doctest: +SKIP
{'accuracy': 0.667, 'macro_f1': 0.667, 'roc_auc': 1.0, 'confusion_matrix': [[1, 0], [1, 1]], ...}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["classification_metrics", "regression_metrics", "validation_loss"]


def _float(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def classification_metrics(
    y_true: np.ndarray[Any, Any],
    y_pred: np.ndarray[Any, Any],
    probabilities: np.ndarray[Any, Any],
    classes: Sequence[Any],
) -> dict[str, Any]:
    """Accuracy, macro F1, ROC AUC (binary) and the confusion matrix over ``classes``."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

    labels = list(classes)
    metrics: dict[str, Any] = {
        "accuracy": _float(accuracy_score(y_true, y_pred)),
        "macro_f1": _float(
            f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        ),
        "roc_auc": None,
    }
    if len(labels) == 2 and len(np.unique(y_true)) == 2:
        positive = np.asarray(y_true) == labels[1]
        metrics["roc_auc"] = _float(roc_auc_score(positive, probabilities[:, 1]))
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    metrics["confusion_matrix"] = {
        "labels": [_plain(c) for c in labels],
        "matrix": matrix.astype(int).tolist(),
    }
    metrics["rows"] = len(y_true)
    return metrics


def regression_metrics(
    y_true: np.ndarray[Any, Any], y_pred: np.ndarray[Any, Any]
) -> dict[str, Any]:
    """RMSE, MAE and R² of ``y_pred`` against ``y_true``."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(y_true.shape)
    return {
        "rmse": _float(math.sqrt(mean_squared_error(y_true, y_pred))),
        "mae": _float(mean_absolute_error(y_true, y_pred)),
        "r2": _float(r2_score(y_true, y_pred)) if len(y_true) > 1 else None,
        "rows": len(y_true),
    }


def validation_loss(
    task: str,
    y_true: np.ndarray[Any, Any],
    predicted: np.ndarray[Any, Any],
    classes: Sequence[Any] | np.ndarray[Any, Any] | None = None,
) -> float:
    """The loss a training minimises, on held-out rows and without the weight penalty: the log
    loss of the class probabilities, or half the mean squared error (scikit-learn's MLP
    losses, so the training and validation curves are comparable). Inf or NaN when the model
    has diverged."""
    if task == "classification":
        if not np.all(np.isfinite(predicted)):
            return math.nan
        index = np.searchsorted(np.asarray(classes), y_true)
        chosen = predicted[np.arange(len(index)), index]
        return float(-np.mean(np.log(np.clip(chosen, 1e-15, 1.0))))
    with np.errstate(all="ignore"):
        error = np.asarray(predicted, dtype=np.float64).reshape(-1) - np.asarray(
            y_true, dtype=np.float64
        )
        return float(np.mean(error * error) / 2)


def _plain(value: Any) -> Any:
    """A class label as JSON holds it (numpy scalars are not JSON)."""
    if isinstance(value, np.generic):
        return value.item()
    return value
