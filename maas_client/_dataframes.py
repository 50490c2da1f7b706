"""pandas in and out: DataFrames as model inputs, and outputs as a DataFrame.

pandas is optional (``pip install 'maas[pandas]'``): nothing here imports it until a DataFrame
is turned into inputs (it is then already imported) or a result into a DataFrame.

A DataFrame goes to a model in one of two ways:

- its columns are named after the model's inputs: each input takes its column (a column of
  arrays or lists is stacked into one tensor, one row per DataFrame row);
- the model has one 2-D input ``[-1, n]``: the DataFrame's numeric columns, in order, are its
  ``n`` features.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ._exceptions import InputError

if TYPE_CHECKING:
    import pandas

    from .types import ModelMetadata

__all__ = [
    "PANDAS_MISSING",
    "dataframe_inputs",
    "is_dataframe",
    "outputs_to_dataframe",
    "require_pandas",
]

PANDAS_MISSING = "this needs pandas, which is not installed: pip install 'maas[pandas]'"


def require_pandas() -> Any:
    """The pandas module, or an ImportError that says what to install."""
    try:
        import pandas
    except ImportError as exc:
        raise ImportError(PANDAS_MISSING) from exc
    return pandas


def is_dataframe(value: Any) -> bool:
    """Whether ``value`` is a pandas DataFrame (checked without importing pandas)."""
    cls = type(value)
    return cls.__name__ == "DataFrame" and cls.__module__.split(".")[0] == "pandas"


def _column(frame: Any, name: str, rank: int) -> np.ndarray[Any, Any]:
    column = frame[name]
    if rank <= 1:
        values: np.ndarray[Any, Any] = column.to_numpy()
        if values.dtype == object and len(values) and isinstance(values[0], str):
            return values  # strings for a BYTES input
        return values
    cells = column.to_list()
    try:
        return np.stack([np.asarray(cell) for cell in cells])
    except ValueError as exc:
        raise InputError(
            f"column {name!r}: the model's input {name!r} has {rank} dimensions, so each cell "
            f"must hold an array of the same shape ({exc})"
        ) from None


def dataframe_inputs(frame: Any, metadata: ModelMetadata | None) -> dict[str, Any]:
    """The inputs that a DataFrame stands for (see the module's doc)."""
    if metadata is None or not metadata.inputs:
        raise InputError("a DataFrame needs the model's metadata to match columns to inputs")
    columns = [str(c) for c in frame.columns]
    names = [spec.name for spec in metadata.inputs]
    if all(name in columns for name in names):
        return {spec.name: _column(frame, spec.name, len(spec.shape)) for spec in metadata.inputs}
    if len(metadata.inputs) == 1 and len(metadata.inputs[0].shape) == 2:
        spec = metadata.inputs[0]
        numeric = frame.select_dtypes(include=["number", "bool"])
        if numeric.shape[1] == 0:
            raise InputError(
                f"the DataFrame has no numeric columns for input {spec.name!r} {spec.shape}"
            )
        width = spec.shape[1]
        if width >= 0 and numeric.shape[1] != width:
            raise InputError(
                f"input {spec.name!r} {spec.shape} takes {width} features, and the DataFrame "
                f"has {numeric.shape[1]} numeric columns; select the {width} columns to send"
            )
        return {spec.name: numeric.to_numpy()}
    wanted = ", ".join(repr(n) for n in names)
    raise InputError(
        f"the DataFrame's columns do not name the inputs of model {metadata.name!r} ({wanted}); "
        "rename the columns after the inputs, or pass a mapping {name: array}"
    )


def outputs_to_dataframe(
    outputs: Mapping[str, np.ndarray[Any, Any]], index: Any = None
) -> pandas.DataFrame:
    """One row per batch row: 1-D outputs are columns, 2-D ones ``name_0``... (see
    :meth:`~maas_client.InferResult.to_pandas`)."""
    pd = require_pandas()
    rows = {a.shape[0] for a in outputs.values() if a.ndim >= 1}
    if len(rows) > 1 or any(a.ndim == 0 for a in outputs.values()):
        shapes = ", ".join(f"{n} {list(a.shape)}" for n, a in outputs.items())
        raise ValueError(
            f"the outputs do not share a batch dimension ({shapes}); build the DataFrame "
            "from result[name] yourself"
        )
    columns: dict[str, Any] = {}
    for name, array in outputs.items():
        if array.ndim == 1:
            columns[name] = array
        elif array.ndim == 2:
            for i in range(array.shape[1]):
                columns[f"{name}_{i}"] = array[:, i]
        else:
            columns[name] = list(array)
    return pd.DataFrame(columns, index=index)
