"""The ``batch`` job kind: run a model over every row of a dataset and keep the results as a
dataset.

The spec (checked when the job is created, against the model's metadata and the dataset's
schema, so that a mismatch is a 400 naming the column and what was expected)::

    {"type": "batch", "model": "mlp", "version": null, "dataset": "rows", "dataset_version": null,
     "inputs": {"input": "x"},        # model input -> column (or a list of scalar columns,
                                      # stacked); by name when they match
     "outputs": ["output"],           # all of the model's by default
     "batch_size": 64,                # rows per request; the model's max_batch_size by default
     "chunk_rows": 8192,              # rows committed at once (a multiple of batch_size)
     "priority": 2,                   # the model's lowest priority level by default
     "stop_on_error": false,
     "endpoints": null,               # ["http://a:8000", ...]: spread the requests over servers
     "result_name": null}             # the result dataset's name ("<job id>-results")

The rows are read in chunks of ``chunk_rows``. Each chunk is sent as requests of ``batch_size``
rows through the model's scheduler (as online requests are, at the job's priority), or through a
:class:`maas_client.AsyncClient` over ``endpoints`` (its endpoint pool: fail-over and least
outstanding requests). Its results are written to a Parquet part file (temporary name, fsync,
rename), and only then is the chunk committed in the job store with its row range: a chunk is
either committed with its part file or redone, so every row's result is kept exactly once, even
across a ``kill -9``. A request that fails fails its rows only: they are recorded with the
error and the job goes on (unless ``stop_on_error``). At the end the parts become the result
dataset: column ``row`` (the row's number in the dataset) and one column per output.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import threading
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maas_wire.codec import DATATYPES
from maas_wire.datasets import DatasetField, DatasetInfo
from maas_wire.jobs import JobInfo, JobProgress

from .batch_parts import part_kinds, read_part_column, to_part_column
from .datasets import DatasetNotFound, OpenDataset
from .errors import BadRequestError, ServerError
from .job_pacing import POLITE_ROWS, Pacing
from .jobs import JobCancelled, JobContext, JobFailed, RestartPolicy, ValidationContext

__all__ = ["BatchKind", "ModelSignature", "TensorSignature"]

DEFAULT_BATCH_SIZE = 64
"""Rows per request for a model that declares no ``max_batch_size``."""
TARGET_CHUNKS = 100
"""How many commits a job aims at: fewer costs more rows redone after a crash, more costs an
fsync each."""
MAX_CHUNK_ROWS = 65_536
IN_MEMORY_RESULT_BYTES = 256 * 1024 * 1024
"""Results up to this size are gathered in memory and written once; larger ones are streamed
from the part files (an extra copy on disk, but bounded memory)."""
BUSY_RETRY_S = 60.0
"""How long a request of a job waits for a busy model (503) before its rows fail."""
_SPEC_KEYS = frozenset(
    {
        "model",
        "version",
        "dataset",
        "dataset_version",
        "inputs",
        "outputs",
        "batch_size",
        "chunk_rows",
        "priority",
        "stop_on_error",
        "endpoints",
        "result_name",
        "concurrency",
    }
)
_NUMERIC = {name for name, dtype in DATATYPES.items() if dtype.kind in "biuf"}


@dataclass(frozen=True)
class TensorSignature:
    name: str
    datatype: str
    shape: tuple[int, ...]
    """Per row (without the batch dimension); -1: any size."""


@dataclass(frozen=True)
class ModelSignature:
    """What a batch job needs to know of a model."""

    name: str
    inputs: list[TensorSignature]
    outputs: list[TensorSignature]
    max_batch_size: int
    priority_levels: int

    @classmethod
    def of_local(cls, ctx: ValidationContext, model: str, version: str | None) -> ModelSignature:
        loaded = ctx.repository.get(model, version)
        batched = loaded.max_batch_size > 0
        specs = [*loaded.inputs, *loaded.outputs]
        if not batched and not all(s.shape and s.shape[0] == -1 for s in specs):
            raise BadRequestError(
                f"model {model!r} has no batch dimension (max_batch_size 0 and a fixed first "
                "dimension); a batch job sends many rows per request"
            )
        levels = loaded.scheduler.config.priority_levels

        def row(spec: Any) -> TensorSignature:
            return TensorSignature(spec.name, spec.datatype, tuple(spec.shape[1:]))

        return cls(
            model,
            [row(s) for s in loaded.inputs],
            [row(s) for s in loaded.outputs],
            loaded.max_batch_size,
            levels,
        )

    @classmethod
    def of_remote(cls, endpoints: Sequence[str], model: str, version: str | None) -> ModelSignature:
        from maas_client import APIError, Client

        try:
            with Client(list(endpoints), max_retries=2) as client:
                metadata = client.models.get(model, version)
                try:
                    config = client.models.config(model, version)
                    max_batch = int(config.max_batch_size or 0)
                    batching = (config.model_extra or {}).get("dynamic_batching") or {}
                    levels = int(batching.get("priority_levels") or 0)
                except APIError:
                    max_batch, levels = 0, 0
        except APIError as exc:
            raise BadRequestError(
                f"model {model!r} could not be described by the endpoints {list(endpoints)}: {exc}"
            ) from None

        def row(spec: Any) -> TensorSignature:
            return TensorSignature(spec.name, spec.datatype, tuple(spec.shape[1:]))

        return cls(
            model,
            [row(s) for s in metadata.inputs],
            [row(s) for s in metadata.outputs],
            max_batch,
            levels,
        )


def _describe(tensor: TensorSignature) -> str:
    return f"{tensor.datatype} {list(tensor.shape)} per row"


def _fits(want: tuple[int, ...], got: Sequence[int]) -> bool:
    return len(want) == len(got) and all(w in (-1, g) for w, g in zip(want, got, strict=True))


def _castable(column: str, model: str) -> bool:
    """Whether a column of datatype ``column`` may feed an input of datatype ``model``:
    the same, or numbers to floats, or integers to integers (BYTES only to BYTES)."""
    if column == model:
        return True
    if column in _NUMERIC and model in _NUMERIC:
        kind = DATATYPES[model].kind
        return kind == "f" or DATATYPES[column].kind in "biu"
    return False


def _field_map(info: DatasetInfo) -> dict[str, DatasetField]:
    return {f.name: f for f in info.schema_}


def _check_mapping(
    signature: ModelSignature, fields: Mapping[str, Any], inputs: Mapping[str, Any] | None
) -> dict[str, str | list[str]]:
    """The input -> column(s) mapping, completed by name and checked."""
    given = dict(inputs or {})
    known = {t.name: t for t in signature.inputs}
    shown = [f"{n!r} ({f.datatype} {list(f.shape)})" for n, f in list(fields.items())[:12]]
    if len(fields) > len(shown):
        shown.append(f"and {len(fields) - len(shown)} more")
    columns = ", ".join(shown)
    for name in given:
        if name not in known:
            raise BadRequestError(
                f"'inputs' names {name!r}, which model {signature.name!r} does not have; its "
                f"inputs are {_listed(signature.inputs)}"
            )
    mapping: dict[str, str | list[str]] = {}
    for tensor in signature.inputs:
        source = given.get(tensor.name)
        if source is None:
            if tensor.name in fields:
                source = tensor.name
            elif len(signature.inputs) == 1 and len(fields) == 1:
                source = next(iter(fields))
            elif (
                len(signature.inputs) == 1
                and len(tensor.shape) == 1
                and tensor.shape[0] in (-1, len(fields))
                and all(
                    not f.shape and _castable(f.datatype, tensor.datatype) for f in fields.values()
                )
            ):
                source = list(fields)
            else:
                raise BadRequestError(
                    f"model input {tensor.name!r} ({_describe(tensor)}) has no column of that "
                    f'name; map one with "inputs": {{{tensor.name!r}: COLUMN}}. The dataset\'s '
                    f"columns are {columns}"
                )
        mapping[tensor.name] = _check_source(tensor, source, fields, columns)
    return mapping


def _check_source(
    tensor: TensorSignature, source: Any, fields: Mapping[str, Any], columns: str
) -> str | list[str]:
    if isinstance(source, str):
        names = [source]
    elif isinstance(source, list) and source and all(isinstance(s, str) for s in source):
        names = list(source)
    else:
        raise BadRequestError(
            f"'inputs' for {tensor.name!r} must be a column name or a list of scalar column "
            f"names, not {source!r}"
        )
    for name in names:
        field = fields.get(name)
        if field is None:
            raise BadRequestError(
                f"column {name!r} (for model input {tensor.name!r}) is not in the dataset; its "
                f"columns are {columns}"
            )
        if not _castable(field.datatype, tensor.datatype):
            raise BadRequestError(
                f"column {name!r} is {field.datatype}; model input {tensor.name!r} expects "
                f"{tensor.datatype}"
            )
    if isinstance(source, list):
        bad = [n for n in names if list(fields[n].shape)]
        if bad:
            raise BadRequestError(
                f"columns stacked into {tensor.name!r} must be scalars; column {bad[0]!r} has "
                f"shape {list(fields[bad[0]].shape)} per row"
            )
        if not _fits(tensor.shape, [len(names)]):
            raise BadRequestError(
                f"model input {tensor.name!r} expects {_describe(tensor)}; {len(names)} stacked "
                "columns give "
                f"[{len(names)}]"
            )
        return names
    shape = list(fields[source].shape)
    if not _fits(tensor.shape, shape) and not (not shape and _fits(tensor.shape, [1])):
        raise BadRequestError(
            f"column {source!r} has shape {shape} per row; model input {tensor.name!r} expects "
            f"{_describe(tensor)}"
        )
    return str(source)


def _listed(tensors: Sequence[TensorSignature]) -> str:
    return ", ".join(f"{t.name!r} ({_describe(t)})" for t in tensors)


def _positive_int(spec: Mapping[str, Any], key: str) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequestError(f"{key!r} must be a positive integer, not {value!r}")
    return value


def _text(spec: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    value = spec.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise BadRequestError(f"{key!r} must be a non-empty string, not {value!r}")
    return value


def _version_text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise BadRequestError(f"'version' must be a version number, not {value!r}")
    return str(value)


class BatchKind:
    """Batch inference over a dataset (see the module's documentation)."""

    type = "batch"

    # --- create -------------------------------------------------------------------------------

    def validate(self, spec: dict[str, Any], ctx: ValidationContext) -> dict[str, Any]:
        unknown = sorted(set(spec) - _SPEC_KEYS)
        if unknown:
            raise BadRequestError(
                f"unknown batch job field {unknown[0]!r}; the fields are {sorted(_SPEC_KEYS)}"
            )
        model = _text(spec, "model", required=True)
        dataset = _text(spec, "dataset", required=True)
        assert model is not None and dataset is not None
        version = _version_text(spec.get("version"))
        endpoints = spec.get("endpoints")
        if endpoints is not None and (
            not isinstance(endpoints, list)
            or not endpoints
            or not all(
                isinstance(e, str) and e.startswith(("http://", "https://")) for e in endpoints
            )
        ):
            raise BadRequestError(
                f"'endpoints' must be a non-empty list of http(s) URLs, not {endpoints!r}"
            )
        if endpoints:
            signature = ModelSignature.of_remote(endpoints, model, version)
        else:
            signature = ModelSignature.of_local(ctx, model, version)
        if ctx.datasets is None:
            raise BadRequestError("this server keeps no datasets")
        dataset_version = spec.get("dataset_version")
        if dataset_version is not None and (
            not isinstance(dataset_version, int) or isinstance(dataset_version, bool)
        ):
            raise BadRequestError(f"'dataset_version' must be an integer, not {dataset_version!r}")
        info = ctx.datasets.get(dataset, dataset_version)
        if not ctx.may_read(info.owner):  # another key's dataset: not there, as its routes say
            raise DatasetNotFound(f"no dataset named {dataset!r}")
        fields = _field_map(info)
        inputs = spec.get("inputs")
        if inputs is not None and not isinstance(inputs, dict):
            raise BadRequestError(f"'inputs' must be an object {{input: column}}, not {inputs!r}")
        mapping = _check_mapping(signature, fields, inputs)
        outputs = spec.get("outputs")
        known_outputs = [t.name for t in signature.outputs]
        if outputs is None:
            outputs = known_outputs
        elif (
            not isinstance(outputs, list)
            or not outputs
            or not all(isinstance(o, str) for o in outputs)
        ):
            raise BadRequestError(f"'outputs' must be a non-empty list of names, not {outputs!r}")
        for name in outputs:
            if name not in known_outputs:
                raise BadRequestError(
                    f"model {model!r} has no output {name!r}; its outputs are {known_outputs}"
                )
        if len(set(outputs)) < len(outputs) or "row" in outputs:
            raise BadRequestError("'outputs' must be distinct and not 'row' (the row id column)")
        batch_size = (
            _positive_int(spec, "batch_size") or signature.max_batch_size or DEFAULT_BATCH_SIZE
        )
        if signature.max_batch_size and batch_size > signature.max_batch_size:
            raise BadRequestError(
                f"'batch_size' {batch_size} exceeds the max_batch_size of model {model!r}, "
                f"{signature.max_batch_size}"
            )
        rows = int(info.rows)
        chunk_rows = _positive_int(spec, "chunk_rows")
        if chunk_rows is None:
            target = min(MAX_CHUNK_ROWS, max(1, math.ceil(rows / TARGET_CHUNKS)))
            chunk_rows = max(1, math.ceil(target / batch_size)) * batch_size
        priority = spec.get("priority")
        if priority is None:
            priority = signature.priority_levels or None
        elif (
            not isinstance(priority, int)
            or isinstance(priority, bool)
            or priority < 1
            or (signature.priority_levels and priority > signature.priority_levels)
        ):
            raise BadRequestError(
                f"'priority' must be a level from 1 to {signature.priority_levels or 1} of "
                f"model {model!r}, not {priority!r}"
            )
        stop_on_error = spec.get("stop_on_error", False)
        if not isinstance(stop_on_error, bool):
            raise BadRequestError(f"'stop_on_error' must be true or false, not {stop_on_error!r}")
        concurrency = _positive_int(spec, "concurrency")
        result_name = _text(spec, "result_name")
        return {
            "model": model,
            "version": version,
            "dataset": dataset,
            "dataset_version": int(info.version),
            "inputs": mapping,
            "outputs": list(outputs),
            "batch_size": batch_size,
            "chunk_rows": chunk_rows,
            "priority": priority,
            "stop_on_error": stop_on_error,
            "endpoints": list(endpoints) if endpoints else None,
            "concurrency": concurrency,
            "result_name": result_name,
            "rows": rows,
            "input_types": {
                t.name: {"datatype": t.datatype, "shape": list(t.shape)} for t in signature.inputs
            },
        }

    def initial_progress(self, spec: Mapping[str, Any]) -> JobProgress:
        return JobProgress(unit="rows", done=0, total=spec["rows"])

    def on_restart(self, job: JobInfo) -> RestartPolicy:
        return "resume"

    # --- run ----------------------------------------------------------------------------------

    async def run(self, ctx: JobContext) -> dict[str, Any]:
        for event in await asyncio.to_thread(ctx.store.events, ctx.job_id):
            if event.type == "result":  # made before a crash, just before the job's end
                return dict(event.data)
        spec = ctx.spec
        opened = await asyncio.to_thread(
            functools.partial(
                ctx.datasets.open,
                spec["dataset"],
                spec["dataset_version"],
                user=f"job {ctx.job_id}",
            )
        )
        try:
            run = _BatchRun(ctx, opened)
            await run.all_chunks()
        finally:
            await asyncio.to_thread(opened.close)
        result_name = spec.get("result_name") or f"{ctx.job_id}-results"
        info = await asyncio.to_thread(run.publish, result_name)
        result = {"dataset": info.name, "version": info.version, "rows": info.rows}
        ctx.emit("result", result)
        return result


class _BatchRun:
    """One run of a batch job (a fresh one after each restart)."""

    def __init__(self, ctx: JobContext, opened: OpenDataset) -> None:
        self.ctx = ctx
        self.spec = ctx.spec
        self.opened = opened
        self.rows: int = self.spec["rows"]
        self.parts = ctx.data_dir
        self.failures: list[str] = []
        self.done_rows = 0
        self.committing = asyncio.Lock()  # chunks commit one at a time: progress never goes back
        self.client: Any = None
        self.pacing = Pacing()
        # The numeric results of this run's parts, by part file, while they fit the in-memory
        # result: the result is made from these without reading the parts back.
        self.kept: dict[str, dict[str, np.ndarray[Any, Any]]] = {}
        self.kept_bytes = 0
        self.kept_lock = threading.Lock()

    # --- the chunks ---------------------------------------------------------------------------

    async def all_chunks(self) -> None:
        ctx, spec = self.ctx, self.spec
        committed = {
            c.start
            for c in await asyncio.to_thread(ctx.store.chunks, ctx.job_id)
            if c.state == "done"
        }
        chunk_rows = spec["chunk_rows"]
        starts = [s for s in range(0, self.rows, chunk_rows) if s not in committed]
        self.done_rows = self.rows - sum(min(chunk_rows, self.rows - s) for s in starts)
        ctx.start_rate(self.done_rows)
        ctx.measure(self.done_rows, self.rows, "rows")
        ctx.progress_event(force=True)
        concurrency = spec.get("concurrency")
        if spec.get("endpoints"):
            from maas_client import AsyncClient

            self.client = AsyncClient(list(spec["endpoints"]), max_retries=3)
            concurrency = concurrency or 4 * len(spec["endpoints"])
        else:
            model = ctx.repository.get(spec["model"], spec["version"])
            concurrency = concurrency or max(4, 2 * model.config.instance_count)
        self.requests = asyncio.Semaphore(concurrency)
        chunks_at_once = asyncio.Semaphore(3)  # chunks read or written while others run
        tasks: list[asyncio.Task[None]] = []
        try:
            for start in starts:
                await chunks_at_once.acquire()
                if ctx.cancelled or self.failures:
                    chunks_at_once.release()
                    break
                task = asyncio.create_task(self.chunk(start, min(start + chunk_rows, self.rows)))
                task.add_done_callback(lambda _: chunks_at_once.release())
                tasks.append(task)
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            if self.client is not None:
                await self.client.close()
        if ctx.cancelled:
            raise JobCancelled()
        if self.failures:
            raise JobFailed(self.failures[0])

    async def chunk(self, start: int, stop: int) -> None:
        spec = self.spec
        feeds = await asyncio.to_thread(self.read, start, stop)
        batch = spec["batch_size"]
        bounds = [(s, min(s + batch, stop)) for s in range(start, stop, batch)]
        answers = await asyncio.gather(
            *(self.request(feeds, s - start, e - start) for s, e in bounds)
        )
        failed = [
            (s, e, a) for (s, e), a in zip(bounds, answers, strict=True) if isinstance(a, str)
        ]
        good = [
            (s, e, a) for (s, e), a in zip(bounds, answers, strict=True) if not isinstance(a, str)
        ]
        part = await asyncio.to_thread(self.write_part, start, good)
        async with self.committing:
            self.done_rows += stop - start
            progress = self.ctx.measure(self.done_rows, self.rows, "rows")
            await asyncio.to_thread(
                self.ctx.store.commit_chunk,
                self.ctx.job_id,
                start,
                stop,
                part=part,
                failed=failed,
                progress=progress,
            )
        for s, e, error in failed:
            self.ctx.emit("chunk_error", {"start": s, "stop": e, "error": error})
        self.ctx.progress_event(force=self.done_rows >= self.rows)
        if failed and spec["stop_on_error"]:
            s, e, error = failed[0]
            self.failures.append(f"rows {s}:{e} failed ({error}); the job stops (stop_on_error)")

    def read(self, start: int, stop: int) -> dict[str, np.ndarray[Any, Any]]:
        """The model's inputs for rows ``start:stop``, in the datatypes and shapes it takes."""
        mapping: Mapping[str, str | list[str]] = self.spec["inputs"]
        types: Mapping[str, Any] = self.spec["input_types"]
        wanted = sorted(
            {
                c
                for source in mapping.values()
                for c in ([source] if isinstance(source, str) else source)
            }
        )
        columns = self.opened.read(start, stop, wanted)
        feeds: dict[str, np.ndarray[Any, Any]] = {}
        for name, source in mapping.items():
            datatype = types[name]["datatype"]
            shape = types[name]["shape"]
            if isinstance(source, list):
                array = np.stack([np.asarray(columns[c]) for c in source], axis=1)
            else:
                array = np.asarray(columns[source])
                if array.ndim == 1 and len(shape) == 1:
                    array = array.reshape(-1, 1)
            if datatype == "BYTES":
                feeds[name] = array.astype(object, copy=False)
            else:
                feeds[name] = np.ascontiguousarray(array, dtype=DATATYPES[datatype])
        return feeds

    async def request(
        self, feeds: Mapping[str, np.ndarray[Any, Any]], lo: int, hi: int
    ) -> dict[str, np.ndarray[Any, Any]] | str:
        """The outputs for rows ``lo:hi`` of the chunk, or what went wrong."""
        spec = self.spec
        rows = {name: array[lo:hi] for name, array in feeds.items()}
        outputs: list[str] = spec["outputs"]
        async with self.requests:
            try:
                if self.client is not None:
                    parameters = {"priority": spec["priority"]} if spec["priority"] else None
                    result = await self.client.infer(
                        spec["model"],
                        rows,
                        version=spec["version"],
                        outputs=outputs,
                        parameters=parameters,
                        validate=False,
                    )
                    return {name: result[name] for name in outputs}
                return await self.local(rows, outputs)
            except ServerError as exc:
                return exc.message
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the model refused these rows, or the server went away
                return f"{type(exc).__name__}: {exc}"

    async def local(
        self, rows: dict[str, np.ndarray[Any, Any]], outputs: list[str]
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Run rows through this server's model, as an online request would (its scheduler).
        While the model is busy or being reloaded (503: a full queue, a version being
        replaced), wait and try again, for up to :data:`BUSY_RETRY_S`."""
        spec = self.spec
        delay = 0.05
        deadline = time.monotonic() + BUSY_RETRY_S
        while True:
            try:
                model = self.ctx.repository.get(spec["model"], spec["version"])
                count = len(next(iter(rows.values())))
                if count <= POLITE_ROWS or not self.pacing.polite(model.stats):
                    infer = functools.partial(
                        model.scheduler.infer, rows, outputs, spec["priority"]
                    )
                    return await self.pacing.run(model.stats, infer)
                pieces = []  # other requests use the model: smaller requests, one at a time
                for lo in range(0, count, POLITE_ROWS):
                    piece = {k: v[lo : lo + POLITE_ROWS] for k, v in rows.items()}
                    infer = functools.partial(
                        model.scheduler.infer, piece, outputs, spec["priority"]
                    )
                    pieces.append(await self.pacing.run(model.stats, infer))
                return {o: np.concatenate([p[o] for p in pieces]) for o in outputs}
            except ServerError as exc:
                if exc.status_code != 503 or self.ctx.cancelled or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)

    def write_part(
        self, start: int, good: Sequence[tuple[int, int, Mapping[str, np.ndarray[Any, Any]]]]
    ) -> str | None:
        """The chunk's results as ``part-<start>.parquet``: written to a temporary name, synced,
        then renamed into place (a chunk redone after a crash overwrites it whole). Each row's
        value of a multi-dimensional output is one fixed-size binary cell (its raw bytes), which
        Parquet writes and reads without the cost of nested lists."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not good:
            return None
        outputs: list[str] = self.spec["outputs"]
        row = np.concatenate([np.arange(s, e, dtype=np.int64) for s, e, _ in good])
        columns: dict[str, Any] = {"row": pa.array(row)}
        metadata: dict[str, str] = {}
        arrays: dict[str, np.ndarray[Any, Any]] = {}
        for name in outputs:
            arrays[name] = np.concatenate([np.asarray(a[name]) for _, _, a in good])
            columns[name], metadata[name] = to_part_column(arrays[name])
        table = pa.table(columns).replace_schema_metadata(
            {f"maas:{k}": v for k, v in metadata.items()}
        )
        path = self.parts / f"part-{start:012d}.parquet"
        temporary = path.with_suffix(".tmp")
        with open(temporary, "wb") as sink:
            pq.write_table(table, sink, compression="none")
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(temporary, path)
        self.keep(path.name, {"row": row, **arrays})
        return path.name

    def keep(self, part: str, columns: dict[str, np.ndarray[Any, Any]]) -> None:
        """Hold a part's numeric columns in memory while the result fits there."""
        if any(array.dtype == object for array in columns.values()):
            return
        size = sum(array.nbytes for array in columns.values())
        with self.kept_lock:
            if self.kept_bytes + size <= IN_MEMORY_RESULT_BYTES:
                self.kept[part] = columns
                self.kept_bytes += size

    def part_column(
        self, path: Path, column: str, kinds: Mapping[str, Mapping[str, Any]]
    ) -> np.ndarray[Any, Any]:
        """One column of a committed part: from memory when this run wrote it, else read."""
        kept = self.kept.get(path.name)
        if kept is not None:
            return kept[column]
        return read_part_column(path, column, kinds)

    # --- the result ---------------------------------------------------------------------------

    def publish(self, name: str) -> DatasetInfo:
        """The committed parts, in row order, as the result dataset (``row`` and the outputs):
        NPZ arrays, made in memory up to :data:`IN_MEMORY_RESULT_BYTES` and beyond that
        streamed from the parts one column at a time (never every row in memory), or, when an
        output is text, a Parquet table."""
        import pyarrow.parquet as pq

        chunks = [c for c in self.ctx.store.chunks(self.ctx.job_id) if c.state == "done" and c.part]
        if not chunks:
            failed = self.ctx.store.get(self.ctx.job_id)
            first = failed.chunk_errors[0].error if failed and failed.chunk_errors else "?"
            raise JobFailed(f"every row failed; the first failure: {first}")
        outputs: list[str] = self.spec["outputs"]
        paths = [self.parts / c.part for c in chunks if c.part is not None]
        kinds = part_kinds(pq.read_schema(paths[0]))
        if any(kinds[o]["dtype"] == "object" for o in outputs):
            columns = {
                column: np.concatenate([read_part_column(path, column, kinds) for path in paths])
                for column in ["row", *outputs]
            }
            return self.ctx.datasets.create_from_columns(
                name, columns, owner=self.ctx.owner, format="parquet"
            )
        rows = sum(pq.read_metadata(path).num_rows for path in paths)
        row_bytes = sum(
            np.dtype(kinds[c]["dtype"]).itemsize * math.prod(kinds[c]["shape"])
            for c in ["row", *outputs]
        )
        if rows * row_bytes <= IN_MEMORY_RESULT_BYTES:  # one copy in memory, written once
            columns = {
                column: np.concatenate([self.part_column(path, column, kinds) for path in paths])
                for column in ["row", *outputs]
            }
            return self.ctx.datasets.create_from_columns(
                name, columns, owner=self.ctx.owner, format="npz"
            )
        target = self.parts / "result.npz"
        with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for column in ["row", *outputs]:
                kind = kinds[column]
                header = {
                    "descr": np.lib.format.dtype_to_descr(np.dtype(kind["dtype"])),
                    "fortran_order": False,
                    "shape": (rows, *kind["shape"]),
                }
                with archive.open(f"{column}.npy", "w", force_zip64=True) as entry:
                    np.lib.format.write_array_header_2_0(entry, header)
                    for path in paths:
                        entry.write(read_part_column(path, column, kinds).tobytes())
        return self.ctx.datasets.create_from_file(name, target, "npz", owner=self.ctx.owner)
