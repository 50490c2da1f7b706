"""What an :meth:`~maas_client.Client.infer_batched` call gives back: its joined outputs, or
the error that says which rows failed, carrying the outputs of the others."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._exceptions import MaasError
from ._result import InferResult, Timing
from .types import InferenceResponse

__all__ = ["BatchError", "BatchResult", "ChunkFailure"]


class BatchResult(InferResult):
    """The outputs of an :meth:`~maas_client.Client.infer_batched` call, in input order.

    A mapping of output names to arrays like :class:`~maas_client.InferResult`; ``chunks`` holds
    the result of each request (request ids, timings), ``timing`` the whole call (its
    ``attempts`` summed over the requests) and ``index`` the DataFrame index of the rows when the
    inputs were a DataFrame (:meth:`to_pandas` keeps it).
    """

    __slots__ = ("chunks", "index")

    def __init__(
        self,
        response: InferenceResponse,
        outputs: dict[str, np.ndarray[Any, Any]],
        *,
        chunks: list[InferResult],
        timing: Timing,
        index: Any = None,
    ) -> None:
        super().__init__(response, outputs, request_id=None, timing=timing)
        self.chunks = chunks
        self.index = index

    @property
    def request_ids(self) -> list[str | None]:
        return [chunk.request_id for chunk in self.chunks]

    def to_pandas(self, index: Any = None) -> Any:
        return super().to_pandas(self.index if index is None else index)


@dataclass(frozen=True)
class ChunkFailure:
    """Rows ``start:stop`` of an :meth:`~maas_client.Client.infer_batched` call, and why they
    failed: ``error`` is what the chunk's last attempt raised, or (``sent=False``) the error of
    an earlier chunk after which no more chunks were sent."""

    start: int
    stop: int
    error: BaseException
    sent: bool = True

    @property
    def rows(self) -> range:
        return range(self.start, self.stop)


class BatchError(MaasError):
    """Some chunks of an :meth:`~maas_client.Client.infer_batched` call failed after retries.

    Nothing computed is lost: ``result`` holds the outputs of the rows that succeeded (``None``
    when none did), ``succeeded_rows`` their row numbers in the input, ``failures`` each failed
    chunk with its rows and error, and ``failed_rows`` the row numbers to send again.

    >>> try:  # doctest: +SKIP
    ...     result = client.infer_batched("digits", x)
    ... except BatchError as exc:
    ...     kept, retry = exc.result, x[exc.failed_rows]
    """

    def __init__(
        self,
        failures: Sequence[ChunkFailure],
        *,
        rows: int,
        result: BatchResult | None,
        succeeded_rows: np.ndarray[Any, Any],
    ) -> None:
        self.failures = list(failures)
        self.rows = rows
        self.result = result
        self.succeeded_rows = succeeded_rows
        self.failed_rows: np.ndarray[Any, Any] = (
            np.concatenate([np.arange(f.start, f.stop) for f in self.failures])
            if self.failures
            else np.zeros(0, dtype=np.int64)
        )
        first = self.failures[0] if self.failures else None
        detail = f"; first: rows {first.start}-{first.stop - 1}: {first.error}" if first else ""
        self.message = (
            f"{len(self.failed_rows)} of {rows} rows failed in {len(self.failures)} "
            f"request(s){detail}"
        )
        super().__init__(self.message)
