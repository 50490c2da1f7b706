"""What an inference call returns: the outputs as numpy arrays, and where they came from."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .types import InferenceResponse, RepositoryModel

if TYPE_CHECKING:
    import pandas

__all__ = ["InferResult", "RepositoryIndex", "Timing"]


@dataclass(frozen=True)
class Timing:
    """How long a call took on the client's clock, retries and back-off included."""

    seconds: float
    attempts: int


class InferResult(Mapping[str, "np.ndarray[Any, Any]"]):
    """The outputs of one inference, by name.

    >>> result = client.infer("digits", x)  # doctest: +SKIP
    >>> result["probabilities"].shape, result.timing.attempts  # doctest: +SKIP
    ((1, 10), 1)

    BYTES outputs are ``object`` arrays of :class:`bytes`; BF16 outputs are widened to
    ``float32``. ``response`` is the parsed :class:`~maas_client.types.InferenceResponse` (its
    ``outputs`` carry each tensor's datatype, shape and parameters).
    """

    __slots__ = ("outputs", "request_id", "response", "timing")

    def __init__(
        self,
        response: InferenceResponse,
        outputs: dict[str, np.ndarray[Any, Any]],
        *,
        request_id: str | None,
        timing: Timing,
    ) -> None:
        self.response = response
        self.outputs = outputs
        self.request_id = request_id
        self.timing = timing

    @property
    def model_name(self) -> str:
        return self.response.model_name

    @property
    def model_version(self) -> str | None:
        return self.response.model_version

    @property
    def id(self) -> str | None:
        """The ``id`` of the inference response (the request's ``id``, echoed)."""
        return self.response.id

    @property
    def parameters(self) -> dict[str, Any]:
        return self.response.parameters or {}

    def __getitem__(self, name: str) -> np.ndarray[Any, Any]:
        try:
            return self.outputs[name]
        except KeyError:
            known = ", ".join(repr(n) for n in self.outputs) or "none"
            raise KeyError(f"no output {name!r} in this result; outputs: {known}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.outputs)

    def __len__(self) -> int:
        return len(self.outputs)

    def __repr__(self) -> str:
        from ._display import one_line

        shapes = ", ".join(f"{n}: {a.dtype}{list(a.shape)}" for n, a in self.outputs.items())
        return one_line(
            f"{type(self).__name__}(model={self.model_name!r}, version={self.model_version!r}, "
            f"outputs={{{shapes}}})"
        )

    def _repr_html_(self) -> str:
        from ._display import infer_result_html

        return infer_result_html(self)

    def to_pandas(self, index: Any = None) -> pandas.DataFrame:
        """The outputs as a DataFrame, one row per batch row (needs ``pip install 'maas[pandas]'``).

        A 1-D output is one column; a 2-D output ``name`` of width ``k`` is ``k`` columns
        ``name_0`` ... ``name_{k-1}``; higher ranks are one column of arrays, one per row.

        >>> client.infer("digits", x).to_pandas()  # doctest: +SKIP
        """
        from ._dataframes import outputs_to_dataframe

        return outputs_to_dataframe(self.outputs, index=index)


class RepositoryIndex(list[RepositoryModel]):
    """The answer of ``client.models.list()``: a list of rows that also shows as a table."""

    def __repr__(self) -> str:
        from ._display import one_line

        rows = ", ".join(f"{m.name}/{m.version or '-'} {m.state or '?'}" for m in self)
        return one_line(f"RepositoryIndex([{rows}])")

    def _repr_html_(self) -> str:
        from ._display import repository_index_html

        return repository_index_html(self)
