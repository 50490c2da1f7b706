"""What ``client.classify`` returns: the top classes of each input, in input order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from ._result import Timing

if TYPE_CHECKING:
    import pandas

__all__ = ["Classifications"]

_REPR_ROWS = 10


class Classifications(Sequence[list[tuple[str, float]]]):
    """The top ``k`` classes of each input of a :meth:`~maas_client.Client.classify` call.

    A sequence with one ``[(label, score), ...]`` list per input, best first; ``labels``
    (``str``) and ``scores`` (float32) are the same as ``[inputs, k]`` arrays, and
    :meth:`to_pandas` makes one row per input and rank. In a notebook it shows as a table, with
    images as thumbnails.

    >>> result = client.classify("ppocr_cls", ["a.png", "b.png"], top_k=2)  # doctest: +SKIP
    >>> result[1]  # doctest: +SKIP
    [('180', 0.9993), ('0', 0.0007)]
    >>> result.labels[:, 0]  # the best label of each input  # doctest: +SKIP
    array(['0', '180'], dtype=object)

    ``kind`` is ``"text"`` or ``"image"``, ``sources`` what was classified (texts, paths,
    bytes, PIL images...), ``timing`` the whole call and ``request_ids`` those of its requests.
    """

    __slots__ = (
        "kind",
        "labels",
        "model_name",
        "model_version",
        "request_ids",
        "scores",
        "sources",
        "timing",
    )

    def __init__(
        self,
        labels: np.ndarray[Any, Any],
        scores: np.ndarray[Any, Any],
        *,
        kind: str,
        sources: Sequence[Any],
        model_name: str,
        model_version: str | None,
        timing: Timing,
        request_ids: list[str | None],
    ) -> None:
        self.labels = labels
        self.scores = scores
        self.kind = kind
        self.sources = list(sources)
        self.model_name = model_name
        self.model_version = model_version
        self.timing = timing
        self.request_ids = request_ids

    @property
    def top_k(self) -> int:
        """Classes per input."""
        return int(self.labels.shape[1]) if self.labels.ndim == 2 else 0

    def _row(self, index: int) -> list[tuple[str, float]]:
        return [
            (str(label), float(score))
            for label, score in zip(self.labels[index], self.scores[index], strict=True)
        ]

    @overload
    def __getitem__(self, index: int) -> list[tuple[str, float]]: ...

    @overload
    def __getitem__(self, index: slice) -> list[list[tuple[str, float]]]: ...

    def __getitem__(
        self, index: int | slice
    ) -> list[tuple[str, float]] | list[list[tuple[str, float]]]:
        if isinstance(index, slice):
            return [self._row(i) for i in range(len(self))[index]]
        return self._row(range(len(self))[index])

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __iter__(self) -> Iterator[list[tuple[str, float]]]:
        return (self._row(i) for i in range(len(self)))

    def describe(self, index: int) -> str:
        """How input ``index`` shows: its text, its file's name, or what image it is."""
        from ._task_inputs import describe_source

        return describe_source(self.sources[index], self.kind)

    def __repr__(self) -> str:
        from ._display import classifications_repr

        return classifications_repr(self, rows=_REPR_ROWS)

    def _repr_html_(self) -> str:
        from ._display import classifications_html

        return classifications_html(self)

    def to_pandas(self) -> pandas.DataFrame:
        """One row per input and rank: columns ``input`` (the input's position), ``rank``
        (1 for the best class), ``label`` and ``score`` (needs ``pip install 'maas[pandas]'``).

        >>> client.classify("ppocr_cls", paths).to_pandas()  # doctest: +SKIP
        """
        from ._dataframes import require_pandas

        pd = require_pandas()
        rows, k = self.labels.shape if self.labels.ndim == 2 else (0, 0)
        return pd.DataFrame(
            {
                "input": np.repeat(np.arange(rows), k),
                "rank": np.tile(np.arange(1, k + 1), rows),
                "label": self.labels.reshape(-1),
                "score": self.scores.reshape(-1).astype(np.float32),
            }
        )
