"""The parameters of a training job: names, defaults and ranges, checked at create time.

A training job's spec is one flat JSON object (``POST /v2/jobs``)::

    {"type": "training", "dataset": "digits", "target": "digit", "name": "digits-mlp",
     "model": "mlp", "hidden_layers": [128, 64], "epochs": 50}

:meth:`TrainingParams.from_spec` reads it, fills in the defaults and raises :class:`ParamError`
(the caller's 400) naming the first parameter that is unknown, of the wrong type or out of
range; :meth:`TrainingParams.to_spec` is the complete spec the job keeps.

>>> TrainingParams.from_spec({"dataset": "d", "target": "y", "name": "m"}).hidden_layers
(128, 64)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["KINDS", "ParamError", "TrainingParams"]

KINDS = ("mlp", "linear")
TASKS = ("classification", "regression")
ENGINES = ("sklearn", "torch")
ACTIVATIONS = ("relu", "tanh", "logistic", "identity")
OPTIMIZERS = ("adam", "sgd")
ON_RESTART = ("fail", "restart")
DEVICES = ("auto", "cpu", "cuda")

_MLP_ONLY = frozenset(
    {"hidden_layers", "activation", "optimizer", "batch_size", "learning_rate", "patience"}
)
"""Parameters of the network, which a linear model has none of."""
_LINEAR_WEIGHT_DECAY = 1.0
_MLP_WEIGHT_DECAY = 1e-4


class ParamError(ValueError):
    """A parameter is unknown, of the wrong type or out of range (a 400 for the caller)."""


@dataclass(frozen=True)
class TrainingParams:
    """Everything a training needs to know but the data (see the module's documentation)."""

    dataset: str
    target: str
    name: str
    """The model to publish the result as (a new version of it)."""
    dataset_version: int | None = None
    features: tuple[str, ...] | None = None
    """The feature columns; None: every column but the target."""
    task: str | None = None
    """``classification`` or ``regression``; None: decided from the target column."""
    model: str = "mlp"
    engine: str = "sklearn"
    hidden_layers: tuple[int, ...] = (128, 64)
    activation: str = "relu"
    optimizer: str = "adam"
    """``adam``, or ``sgd`` (with momentum 0.9)."""
    epochs: int = 50
    batch_size: int = 64
    learning_rate: float = 0.001
    weight_decay: float = _MLP_WEIGHT_DECAY
    early_stopping: bool = True
    patience: int = 10
    """Epochs without a better validation loss before early stopping ends the training."""
    validation_split: float = 0.1
    test_split: float = 0.2
    seed: int = 0
    max_categories: int = 1000
    """The most distinct values a text column may have to be one-hot encoded."""
    device: str = "auto"
    """torch only: ``cuda`` when present (``auto``), or as given."""
    on_restart: str = "fail"

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> TrainingParams:
        """Read a job's spec (its ``type`` key aside)."""
        known = set(cls.__dataclass_fields__)
        given = {k: v for k, v in spec.items() if k != "type"}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ParamError(
                f"unknown training parameter {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        for required in ("dataset", "target", "name"):
            if given.get(required) is None:
                raise ParamError(f"a training needs {required!r}")
        model = _choice(given, "model", KINDS, "mlp") or "mlp"
        if model == "linear":
            for name in sorted(_MLP_ONLY & set(given)):
                raise ParamError(f"parameter {name!r} does not apply to model 'linear'")
        default_decay = _LINEAR_WEIGHT_DECAY if model == "linear" else _MLP_WEIGHT_DECAY
        features = given.get("features")
        if features is not None:
            if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
                raise ParamError("'features' must be a list of column names")
            if not features:
                raise ParamError("'features' is empty: name at least one column, or omit it")
        params = cls(
            dataset=_text(given, "dataset"),
            target=_text(given, "target"),
            name=_text(given, "name"),
            dataset_version=_optional_int(given, "dataset_version", 1, 2**62),
            features=tuple(features) if features is not None else None,
            task=_choice(given, "task", TASKS, None),
            model=model,
            engine=_choice(given, "engine", ENGINES, "sklearn") or "sklearn",
            hidden_layers=_layers(given.get("hidden_layers", [128, 64])),
            activation=_choice(given, "activation", ACTIVATIONS, "relu") or "relu",
            optimizer=_choice(given, "optimizer", OPTIMIZERS, "adam") or "adam",
            epochs=_int(given, "epochs", 50, 1, 10_000),
            batch_size=_int(given, "batch_size", 64, 1, 1_000_000),
            learning_rate=_float(given, "learning_rate", 0.001, 0.0, 10.0, open_low=True),
            weight_decay=_float(given, "weight_decay", default_decay, 0.0, 1e6),
            early_stopping=_bool(given, "early_stopping", True),
            patience=_int(given, "patience", 10, 1, 10_000),
            validation_split=_float(given, "validation_split", 0.1, 0.0, 0.5, open_low=True),
            test_split=_float(given, "test_split", 0.2, 0.0, 0.5, open_low=True),
            seed=_int(given, "seed", 0, 0, 2**32 - 1),
            max_categories=_int(given, "max_categories", 1000, 2, 100_000),
            device=_choice(given, "device", DEVICES, "auto") or "auto",
            on_restart=_choice(given, "on_restart", ON_RESTART, "fail") or "fail",
        )
        if params.model == "linear" and params.engine == "torch":
            raise ParamError("engine 'torch' trains model 'mlp' only; use engine 'sklearn'")
        if params.device != "auto" and params.engine != "torch":
            raise ParamError("parameter 'device' applies to engine 'torch' only")
        return params

    def to_spec(self) -> dict[str, Any]:
        """The complete spec (defaults filled in), as the job keeps it."""
        spec = asdict(self)
        spec["features"] = list(self.features) if self.features is not None else None
        spec["hidden_layers"] = list(self.hidden_layers)
        if self.model == "linear":
            for name in _MLP_ONLY:
                spec.pop(name)
        return spec

    def hyperparameters(self) -> dict[str, Any]:
        """What the model was trained with (provenance), without the data's names."""
        spec = self.to_spec()
        for name in ("dataset", "dataset_version", "target", "features", "name", "on_restart"):
            spec.pop(name, None)
        return spec


def _text(given: Mapping[str, Any], name: str) -> str:
    value = given[name]
    if not isinstance(value, str) or not value:
        raise ParamError(f"{name!r} must be a non-empty string, not {value!r}")
    return value


def _choice(
    given: Mapping[str, Any], name: str, allowed: tuple[str, ...], default: str | None
) -> str | None:
    value = given.get(name, default)
    if value is None:
        return None
    if value not in allowed:
        raise ParamError(f"{name!r} must be one of {', '.join(allowed)}, not {value!r}")
    return str(value)


def _int(given: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = given.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamError(f"{name!r} must be an integer, not {value!r}")
    if not low <= value <= high:
        raise ParamError(f"{name!r} must be between {low} and {high}, not {value}")
    return value


def _optional_int(given: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    if given.get(name) is None:
        return None
    return _int(given, name, 0, low, high)


def _float(
    given: Mapping[str, Any],
    name: str,
    default: float,
    low: float,
    high: float,
    *,
    open_low: bool = False,
) -> float:
    value = given.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamError(f"{name!r} must be a number, not {value!r}")
    number = float(value)
    too_low = number <= low if open_low else number < low
    if not math.isfinite(number) or too_low or number > high:
        bound = f"greater than {low}" if open_low else f"at least {low}"
        raise ParamError(f"{name!r} must be {bound} and at most {high}, not {value}")
    return number


def _bool(given: Mapping[str, Any], name: str, default: bool) -> bool:
    value = given.get(name, default)
    if not isinstance(value, bool):
        raise ParamError(f"{name!r} must be true or false, not {value!r}")
    return value


def _layers(value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in value)
    ):
        raise ParamError(
            f"'hidden_layers' must be a list of layer widths such as [128, 64], not {value!r}"
        )
    if len(value) > 16:
        raise ParamError(f"'hidden_layers' has {len(value)} layers; at most 16")
    for width in value:
        if not 1 <= width <= 65_536:
            raise ParamError(f"'hidden_layers' widths must be between 1 and 65536, not {width}")
    return tuple(value)
