"""How a dataset's own columns become the features a model trains on.

A training takes the dataset's columns raw; the preprocessing is learned from the training
split only and travels inside the exported ONNX graph (:mod:`maas_server.train_export`), so the
served model takes those same columns:

- a numeric column (any int, uint, float or bool datatype; a scalar per row, or an array such
  as an 8x8 image, whose values are so many features) has its missing values (NaN) replaced by
  the training split's median, then is standardised (zero mean, unit variance);
- a text column (``BYTES``, a scalar per row) is one-hot encoded; a missing value (None, or the
  empty string, which is how a client sends one) is a category of its own, and a category the
  training split never saw encodes as all zeros.

:func:`plan_features` decides this from the dataset's schema and names each model input after
its column (changed only when a name cannot be one: see :func:`input_names`);
:func:`feature_matrix` lays the columns out as one matrix and :func:`build_preprocessor` makes the
scikit-learn ``ColumnTransformer`` over it.

>>> features = plan_features([("image", "FP32", [8, 8]), ("digit", "INT64", [])], "digit")
>>> [(f.column, f.kind, f.width) for f in features]
[('image', 'numeric', 64)]
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "MISSING_CATEGORY",
    "FeatureColumn",
    "FeatureError",
    "build_preprocessor",
    "check_categories",
    "feature_matrix",
    "input_names",
    "plan_features",
    "served_datatype",
]

MISSING_CATEGORY = ""
"""What a missing text value becomes, in training and in the served model (a client sends an
empty string for a missing text value)."""

_FLOATS = frozenset({"FP16", "BF16", "FP32", "FP64"})
_INTEGERS = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
_RESERVED = frozenset({"label", "probabilities", "prediction"})
"""The served model's output names, which no input may take."""
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")
_MAX_NAME = 256

Kind = Literal["numeric", "categorical"]


class FeatureError(ValueError):
    """A column cannot be a feature (or the target cannot be learnt): the message says which
    and why, for the caller."""


@dataclass(frozen=True)
class FeatureColumn:
    """One dataset column as the model takes it."""

    column: str
    """The dataset's name for it."""
    input_name: str
    """The served model's input (the column's name unless it cannot be one)."""
    kind: Kind
    datatype: str
    """The served input's datatype: ``FP32``, ``INT64``, ``BOOL`` or ``BYTES``."""
    shape: tuple[int, ...]
    """Per row: ``()`` for a scalar, ``(8, 8)`` for an image."""

    @property
    def width(self) -> int:
        """How many features it makes before encoding."""
        return math.prod(self.shape) if self.shape else 1

    def describe(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "input": self.input_name,
            "kind": self.kind,
            "datatype": self.datatype,
            "shape": list(self.shape),
        }

    @classmethod
    def from_description(cls, data: Mapping[str, Any]) -> FeatureColumn:
        return cls(
            column=str(data["column"]),
            input_name=str(data["input"]),
            kind=data["kind"],
            datatype=str(data["datatype"]),
            shape=tuple(int(d) for d in data["shape"]),
        )


def served_datatype(column: str, datatype: str, shape: Sequence[int]) -> tuple[Kind, str]:
    """The kind of feature a column of ``datatype`` makes, and its input's datatype."""
    if datatype in _FLOATS:
        return "numeric", "FP32"
    if datatype in _INTEGERS:
        return "numeric", "INT64"
    if datatype == "BOOL":
        return "numeric", "BOOL"
    if datatype == "BYTES":
        if list(shape):
            raise FeatureError(
                f"column {column!r} holds arrays of text (shape {list(shape)} per row), which "
                "cannot be encoded as features: leave it out of the features"
            )
        return "categorical", "BYTES"
    raise FeatureError(
        f"column {column!r} has datatype {datatype}, which cannot be encoded as features: "
        "leave it out of the features"
    )


def input_names(columns: Sequence[str]) -> list[str]:
    """The model input for each column: its own name, unless that is empty, holds control
    characters, is longer than 256 characters or is one of the outputs' names (``label``,
    ``probabilities``, ``prediction``); such a name is cleaned (control characters become
    ``_``, cut to length, ``_input`` appended to an output's name) and made unique."""
    taken: set[str] = set()
    names: list[str] = []
    for column in columns:
        name = _UNPRINTABLE.sub("_", column)[:_MAX_NAME] or "column"
        if name in _RESERVED:
            name += "_input"
        base, n = name, 1
        while name in taken:
            n += 1
            name = f"{base}_{n}"
        taken.add(name)
        names.append(name)
    return names


def plan_features(
    schema: Iterable[tuple[str, str, Sequence[int]]],
    target: str,
    features: Sequence[str] | None = None,
) -> list[FeatureColumn]:
    """The features for ``target`` from a dataset's ``schema`` (name, datatype, per-row shape):
    the ``features`` named, in that order, or every column but the target."""
    fields = {name: (datatype, list(shape)) for name, datatype, shape in schema}
    if target not in fields:
        raise FeatureError(
            f"target column {target!r} is not in the dataset (its columns: {_listing(fields)})"
        )
    if features is None:
        chosen = [name for name in fields if name != target]
    else:
        chosen = list(features)
        unknown = [name for name in chosen if name not in fields]
        if unknown:
            raise FeatureError(
                f"feature column {unknown[0]!r} is not in the dataset (its columns: "
                f"{_listing(fields)})"
            )
        if target in chosen:
            raise FeatureError(f"the target column {target!r} cannot also be a feature")
        if len(set(chosen)) != len(chosen):
            raise FeatureError("a feature column is named twice in features")
    if not chosen:
        raise FeatureError(f"the dataset has no column besides the target {target!r} to learn from")
    planned = []
    for column, name in zip(chosen, input_names(chosen), strict=True):
        datatype, shape = fields[column]
        kind, served = served_datatype(column, datatype, shape)
        planned.append(FeatureColumn(column, name, kind, served, tuple(shape)))
    return planned


def check_categories(
    columns: Mapping[str, np.ndarray[Any, Any]],
    features: Sequence[FeatureColumn],
    max_categories: int,
) -> None:
    """400-worthy text columns: more distinct values than ``max_categories`` (an identifier or
    free text, which one-hot encoding cannot learn from)."""
    for feature in features:
        if feature.kind != "categorical":
            continue
        distinct = len(set(_categories(columns[feature.column]).tolist()))
        if distinct > max_categories:
            raise FeatureError(
                f"column {feature.column!r} has {distinct} distinct text values, too many to "
                f"one-hot encode (at most {max_categories}): leave it out of the features"
            )


def feature_matrix(
    columns: Mapping[str, np.ndarray[Any, Any]], features: Sequence[FeatureColumn]
) -> np.ndarray[Any, Any]:
    """The features' columns side by side, one row per dataset row, in the order of
    ``features`` (an array column spreads over its width): float64 when every feature is
    numeric, else an object matrix with floats and strings (missing text as
    :data:`MISSING_CATEGORY`)."""
    blocks: list[np.ndarray[Any, Any]] = []
    for feature in features:
        values = np.asarray(columns[feature.column])
        rows = values.shape[0]
        if feature.kind == "categorical":
            blocks.append(_categories(values).reshape(rows, 1))
        else:
            blocks.append(values.reshape(rows, feature.width).astype(np.float64))
    if all(block.dtype != object for block in blocks):
        return np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]
    mixed = np.empty((blocks[0].shape[0], sum(b.shape[1] for b in blocks)), dtype=object)
    at = 0
    for block in blocks:
        mixed[:, at : at + block.shape[1]] = block
        at += block.shape[1]
    return mixed


def build_preprocessor(features: Sequence[FeatureColumn]) -> Any:
    """An unfitted ``ColumnTransformer`` over :func:`feature_matrix`'s layout: median
    imputation and standardisation for the numeric positions, one-hot encoding (unknown
    categories ignored) for the text ones; its output is a dense float matrix."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric: list[int] = []
    categorical: list[int] = []
    at = 0
    for feature in features:
        positions = list(range(at, at + feature.width))
        (categorical if feature.kind == "categorical" else numeric).extend(positions)
        at += feature.width
    transformers: list[tuple[str, Any, list[int]]] = []
    if numeric:
        transformers.append(
            (
                "numeric",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                        ("scale", StandardScaler()),
                    ]
                ),
                numeric,
            )
        )
    if categorical:
        transformers.append(
            (
                "categorical",
                OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                categorical,
            )
        )
    return ColumnTransformer(transformers, sparse_threshold=0.0)


def _categories(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Text values as str, a missing one (None, NaN) as :data:`MISSING_CATEGORY`."""
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values.reshape(len(values))):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            out[i] = MISSING_CATEGORY
        elif isinstance(value, bytes):
            out[i] = value.decode("utf-8", "replace")
        else:
            out[i] = str(value)
    return out


def _listing(fields: Mapping[str, Any]) -> str:
    names = list(fields)
    shown = ", ".join(repr(n) for n in names[:20])
    return shown + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
