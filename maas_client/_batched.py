"""``client.infer_batched``: many rows through a model in chunks it accepts, a few at a time.

The inputs (arrays, a mapping, a list of :class:`~maas_client.Input` or a DataFrame) are cut
along their first dimension into chunks of at most the model's ``max_batch_size`` (from its
configuration) or ``batch_size`` rows. ``concurrency`` chunks are in flight at once, each an
ordinary :meth:`~maas_client.Client.infer` with its retries; the outputs come back in input order
as one :class:`BatchResult`. A chunk that still fails after its retries does not stop the others:
when all are done, a :class:`~maas_client.BatchError` carries the outputs of the rows that
succeeded and says which rows failed and why. After an error that every later chunk would meet
too (a missing model, a refused key, inputs that do not fit) no further chunk is sent.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from ._batch_result import BatchError, BatchResult, ChunkFailure
from ._dataframes import is_dataframe
from ._exceptions import (
    AuthenticationError,
    InputError,
    MaasError,
    NotFoundError,
    PermissionDeniedError,
)
from ._inputs import Input, Output, collect_inputs
from ._result import InferResult, Timing
from .types import InferenceResponse, ModelConfiguration, ModelMetadata, ResponseOutput

if TYPE_CHECKING:
    from ._types import CallOptions, VersionLike

__all__ = [
    "NO_CONFIG_STATUSES",
    "Batch",
    "Progress",
    "ProgressLike",
    "async_infer_batched",
    "check_concurrency",
    "chunk_rows",
    "declared_max_batch_size",
    "in_notebook",
    "infer_batched",
    "plan_batch",
    "progress_bar",
]

ProgressLike = bool | Literal["always"]
"""``True``: a progress bar where someone can see it (a notebook, or a terminal on stderr);
``"always"``: also when stderr is not a terminal; ``False``: none."""

_STOPS_THE_BATCH = (InputError, AuthenticationError, PermissionDeniedError, NotFoundError)
"""Errors that every later chunk would meet too: after one, no further chunk is sent."""


# --- planning ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """The inputs as arrays sharing a first dimension of ``rows``, and how they are cut."""

    items: list[Input]
    rows: int
    size: int
    index: Any

    def bounds(self) -> list[tuple[int, int]]:
        return chunk_rows(self.rows, self.size)

    def chunk(self, start: int, stop: int) -> list[Input]:
        return [
            Input(item.name, item.data[start:stop], item.datatype, item.parameters)
            for item in self.items
        ]


def chunk_rows(rows: int, size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``rows`` rows in chunks of at most ``size``."""
    return [(start, min(start + size, rows)) for start in range(0, rows, size)]


def _as_array(item: Input, metadata: ModelMetadata) -> np.ndarray[Any, Any]:
    if isinstance(item.data, np.ndarray):
        return item.data
    datatypes = {spec.name: spec.datatype for spec in metadata.inputs}
    if (item.datatype or datatypes.get(item.name)) == "BYTES":
        return np.asarray(item.data, dtype=object)
    return np.asarray(item.data)


def declared_max_batch_size(metadata: ModelMetadata) -> int | None:
    """maas puts ``max_batch_size`` in the model's metadata; other servers only in its config."""
    value = (metadata.parameters or {}).get("max_batch_size")
    return value if isinstance(value, int) else None


def _max_batch_size(config: ModelConfiguration | None, metadata: ModelMetadata) -> int:
    declared = declared_max_batch_size(metadata)
    if declared is not None:
        return declared
    return config.max_batch_size if config is not None else 0


NO_CONFIG_STATUSES = frozenset({400, 404, 405, 501})
"""Answers to the configuration call of a server that has none (the model itself exists: its
metadata came first)."""


def _shapes(metadata: ModelMetadata) -> str:
    return ", ".join(f"{spec.name} {list(spec.shape)}" for spec in metadata.inputs) or "none"


def plan_batch(
    inputs: Any,
    metadata: ModelMetadata,
    config: ModelConfiguration | None,
    batch_size: int | None,
    *,
    has_config: bool = True,
) -> Batch:
    """How to cut ``inputs``; ``has_config=False``: the server has no configuration endpoint,
    so unless the metadata says, the model's batch size is unknown rather than 0."""
    if batch_size is not None and batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    limit = _max_batch_size(config, metadata)
    if batch_size is None and limit <= 0:
        if not has_config and declared_max_batch_size(metadata) is None:
            raise InputError(
                f"the batch size of model {metadata.name!r} is unknown: the server has no "
                "configuration endpoint and its metadata does not declare max_batch_size "
                f"(input shapes {_shapes(metadata)}); pass batch_size=N with the most rows the "
                "model takes in one request"
            )
        raise InputError(
            f"model {metadata.name!r} declares no batch dimension (max_batch_size 0), so its "
            "inputs cannot be split safely; pass batch_size= if their first dimension is one"
        )
    size = min(batch_size, limit) if batch_size is not None and limit > 0 else batch_size or limit
    index = inputs.index if is_dataframe(inputs) else None
    items = [
        Input(item.name, _as_array(item, metadata), item.datatype, item.parameters)
        for item in collect_inputs(inputs, metadata)
    ]
    lengths = {item.name: item.data.shape[0] if item.data.ndim else None for item in items}
    if any(length is None for length in lengths.values()):
        scalar = next(name for name, length in lengths.items() if length is None)
        raise InputError(f"input {scalar!r} is a scalar: it has no rows to split")
    if len(set(lengths.values())) != 1:
        shown = ", ".join(f"{name}: {length}" for name, length in lengths.items())
        raise InputError(f"the inputs do not have the same number of rows ({shown})")
    rows = next(iter(lengths.values()))
    assert rows is not None
    return Batch(items, rows, size, index)


def _assemble(
    model: str,
    parts: Sequence[tuple[int, int, InferResult]],
    seconds: float,
    index: Any,
) -> BatchResult:
    """One result from the chunks' results, in input order."""
    parts = sorted(parts, key=lambda part: part[0])
    results = [result for _, _, result in parts]
    outputs: dict[str, np.ndarray[Any, Any]] = {}
    described: list[ResponseOutput] = []
    if results:
        first = results[0]
        for wire in first.response.outputs:
            arrays = [result[wire.name] for result in results if wire.name in result.outputs]
            if len(arrays) == 1:
                joined = arrays[0]
            elif arrays[0].ndim == 0:
                joined = np.stack(arrays)
            else:
                joined = np.concatenate(arrays)
            outputs[wire.name] = joined
            described.append(
                ResponseOutput(name=wire.name, shape=list(joined.shape), datatype=wire.datatype)
            )
        version = first.model_version
    else:
        version = None
    response = InferenceResponse(model_name=model, model_version=version, outputs=described)
    attempts = sum(result.timing.attempts for result in results)
    return BatchResult(
        response, outputs, chunks=results, timing=Timing(seconds, attempts), index=index
    )


def _finish(
    model: str,
    batch: Batch,
    done: list[tuple[int, int, InferResult]],
    failures: list[ChunkFailure],
    started: float,
) -> BatchResult:
    seconds = time.monotonic() - started
    if not failures:
        return _assemble(model, done, seconds, batch.index)
    failures.sort(key=lambda failure: failure.start)
    succeeded = (
        np.concatenate([np.arange(start, stop) for start, stop, _ in sorted(done)])
        if done
        else np.zeros(0, dtype=np.int64)
    )
    index = batch.index[succeeded] if batch.index is not None else None
    partial = _assemble(model, done, seconds, index) if done else None
    raise BatchError(failures, rows=batch.rows, result=partial, succeeded_rows=succeeded)


# --- progress ---------------------------------------------------------------------------------


class Progress(Protocol):
    def update(self, n: int) -> Any: ...

    def close(self) -> Any: ...


class _NoProgress:
    def update(self, n: int) -> None:
        return None

    def close(self) -> None:
        return None


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (a live widget bar, a redrawn figure)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def progress_bar(
    progress: ProgressLike, total: int, description: str, unit: str = "rows"
) -> Progress:
    """A tqdm bar over ``total`` rows (or bytes, ``unit="B"``): the notebook widget in Jupyter
    (with ipywidgets), text on stderr elsewhere; nothing when ``progress`` is false, or when
    nobody would see it."""
    scaled = unit == "B"
    if not progress:
        return _NoProgress()
    notebook = in_notebook()
    if progress != "always" and not notebook and not sys.stderr.isatty():
        return _NoProgress()
    if notebook and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm as notebook_tqdm

        bar: Progress = notebook_tqdm(total=total, desc=description, unit=unit, unit_scale=scaled)
        return bar
    from tqdm import tqdm

    text_bar: Progress = tqdm(
        total=total,
        desc=description,
        unit=unit,
        unit_scale=scaled,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    return text_bar


# --- the calls --------------------------------------------------------------------------------


def check_concurrency(concurrency: int) -> None:
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")


def infer_batched(
    infer: Callable[..., InferResult],
    model: str,
    batch: Batch,
    *,
    started: float,
    concurrency: int,
    progress: ProgressLike,
    version: VersionLike,
    outputs: Sequence[str | Output] | None,
    binary: bool,
    validate: bool | None,
    parameters: Mapping[str, Any] | None,
    options: CallOptions,
) -> BatchResult:
    """The requests of :meth:`Client.infer_batched`, ``concurrency`` threads sending them."""
    binary_wanted = binary
    bounds = batch.bounds()
    done: list[tuple[int, int, InferResult]] = []
    failures: list[ChunkFailure] = []
    bar = progress_bar(progress, batch.rows, model)

    def run(start: int, stop: int) -> InferResult:
        return infer(
            model,
            batch.chunk(start, stop),
            version=version,
            outputs=outputs,
            binary=binary_wanted,
            validate=validate,
            parameters=parameters,
            **options,
        )

    pending = deque(bounds)
    stopped: list[BaseException] = []
    unexpected: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        # Each worker takes the next chunk when its last one is answered: no hand-off through
        # the calling thread, which only waits.
        while True:
            with lock:
                if stopped or not pending:
                    return
                start, stop = pending.popleft()
            try:
                result = run(start, stop)
            except MaasError as exc:
                with lock:
                    failures.append(ChunkFailure(start, stop, exc))
                    if isinstance(exc, _STOPS_THE_BATCH):
                        stopped.append(exc)
            except BaseException as exc:  # a bug, not an answer: ends the call
                with lock:
                    unexpected.append(exc)
                    stopped.append(exc)
                return
            else:
                with lock:
                    done.append((start, stop, result))
            with lock:
                bar.update(stop - start)

    workers = [
        threading.Thread(target=worker, name="maas-infer-batched", daemon=True)
        for _ in range(min(concurrency, len(bounds)))
    ]
    try:
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
    except BaseException:  # Ctrl-C: send nothing more, let the requests in flight end
        with lock:
            pending.clear()
        raise
    finally:
        bar.close()
    if unexpected:
        raise unexpected[0]
    if stopped:
        failures += [ChunkFailure(a, b, stopped[0], sent=False) for a, b in pending]
    return _finish(model, batch, done, failures, started)


async def async_infer_batched(
    infer: Callable[..., Awaitable[InferResult]],
    model: str,
    batch: Batch,
    *,
    started: float,
    concurrency: int,
    progress: ProgressLike,
    version: VersionLike,
    outputs: Sequence[str | Output] | None,
    binary: bool,
    validate: bool | None,
    parameters: Mapping[str, Any] | None,
    options: CallOptions,
) -> BatchResult:
    """The requests of :meth:`AsyncClient.infer_batched`, ``concurrency`` tasks sending them."""
    binary_wanted = binary
    pending = list(reversed(batch.bounds()))
    done: list[tuple[int, int, InferResult]] = []
    failures: list[ChunkFailure] = []
    bar = progress_bar(progress, batch.rows, model)
    stopped: list[MaasError] = []

    async def worker() -> None:
        while pending and not stopped:
            start, stop = pending.pop()
            try:
                result = await infer(
                    model,
                    batch.chunk(start, stop),
                    version=version,
                    outputs=outputs,
                    binary=binary_wanted,
                    validate=validate,
                    parameters=parameters,
                    **options,
                )
            except MaasError as exc:
                failures.append(ChunkFailure(start, stop, exc))
                if isinstance(exc, _STOPS_THE_BATCH):
                    stopped.append(exc)
            else:
                done.append((start, stop, result))
            bar.update(stop - start)

    try:
        workers = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(pending)))]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for task in workers:
                task.cancel()
            raise
        if stopped:
            failures += [ChunkFailure(a, b, stopped[0], sent=False) for a, b in pending]
    finally:
        bar.close()
    return _finish(model, batch, done, failures, started)
