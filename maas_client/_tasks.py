"""``client.embed`` and ``client.classify`` without the I/O: which models they fit, how their
inputs are cut into requests, and how the answers become an array or :class:`Classifications`.

Both send the inputs of a pipeline model (see :mod:`._task_inputs`) through
``infer_batched``'s machinery: chunks of at most the model's ``max_batch_size`` (or
``batch_size``; :data:`DEFAULT_TASK_BATCH` when the model declares none, since a pipeline
model's one input is a list whatever its size), a few requests in flight, answers in input
order. The model's metadata says what it does: maas lists its ``task`` among the metadata's
parameters; elsewhere the names of its input and outputs tell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from ._batch_result import BatchError, BatchResult
from ._batched import Batch, declared_max_batch_size
from ._classifications import Classifications
from ._exceptions import APIError, InputError
from ._inputs import Input
from ._task_inputs import IMAGE_INPUT, TEXT_INPUT, InputKind, TaskInputs
from .types import ModelConfiguration, ModelMetadata

__all__ = [
    "CLASSIFICATION_TASKS",
    "DEFAULT_TASK_BATCH",
    "EMBEDDING_TASK",
    "TaskBatch",
    "check_top_k",
    "classification_input",
    "classifications_of",
    "embeddings_of",
    "plan_task_batch",
    "raise_batch_error",
    "require_embedding_model",
]

EMBEDDING_TASK = "embedding"
CLASSIFICATION_TASKS = {"text-classification": TEXT_INPUT, "image-classification": IMAGE_INPUT}
DEFAULT_TASK_BATCH = 32
"""Texts or images per request when the model declares no ``max_batch_size``."""


# --- which models fit ---------------------------------------------------------------------------


def _task(metadata: ModelMetadata) -> str | None:
    task = (metadata.parameters or {}).get("task")
    return task if isinstance(task, str) else None


def _inputs_text(metadata: ModelMetadata) -> str:
    shown = ", ".join(f"{s.name!r} ({s.datatype} {s.shape})" for s in metadata.inputs)
    return shown or "none listed"


def _one_bytes_input(metadata: ModelMetadata) -> str | None:
    if len(metadata.inputs) == 1 and metadata.inputs[0].datatype == "BYTES":
        return metadata.inputs[0].name
    return None


def _has_outputs(metadata: ModelMetadata, *names: str) -> bool:
    known = {s.name for s in metadata.outputs}
    return not known or all(name in known for name in names)


def require_embedding_model(metadata: ModelMetadata) -> None:
    """An :class:`InputError` unless ``metadata`` is that of an embedding model."""
    task = _task(metadata)
    if task == EMBEDDING_TASK:
        return
    if (
        task is None
        and _one_bytes_input(metadata) == TEXT_INPUT
        and _has_outputs(metadata, "embedding")
    ):
        return
    what = (
        f"a model of task {task!r}"
        if task
        else f"not an embedding model (inputs: {_inputs_text(metadata)})"
    )
    raise InputError(
        f"model {metadata.name!r} is {what}; embed needs a model whose configuration says "
        '"task": "embedding"'
    )


def classification_input(metadata: ModelMetadata) -> InputKind:
    """What a classifier takes, texts or images, from its metadata (else an InputError)."""
    task = _task(metadata)
    if task in CLASSIFICATION_TASKS:
        return TEXT_INPUT if CLASSIFICATION_TASKS[task] == TEXT_INPUT else IMAGE_INPUT
    name = _one_bytes_input(metadata)
    if (
        task is None
        and name in (TEXT_INPUT, IMAGE_INPUT)
        and _has_outputs(metadata, "label", "score")
    ):
        return TEXT_INPUT if name == TEXT_INPUT else IMAGE_INPUT
    what = (
        f"a model of task {task!r}"
        if task
        else f"not a classifier (inputs: {_inputs_text(metadata)})"
    )
    raise InputError(
        f"model {metadata.name!r} is {what}; classify needs a model whose configuration says "
        '"task": "text-classification" or "image-classification"'
    )


def check_top_k(top_k: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, not {top_k!r}")


# --- requests -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskBatch(Batch):
    """A :class:`~maas_client._batched.Batch` whose chunks are encoded when they are sent."""

    inputs: TaskInputs

    def chunk(self, start: int, stop: int) -> list[Input]:
        return [Input(self.inputs.kind, self.inputs.encode(start, stop), "BYTES")]


def plan_task_batch(
    inputs: TaskInputs,
    metadata: ModelMetadata,
    config: ModelConfiguration | None,
    batch_size: int | None,
) -> TaskBatch:
    """The chunks of a call: at most ``batch_size`` inputs each, and never more than the model
    takes (its ``max_batch_size``)."""
    if batch_size is not None and batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    declared = declared_max_batch_size(metadata)
    limit = declared if declared is not None else config.max_batch_size if config else 0
    if batch_size is None:
        size = limit if limit > 0 else DEFAULT_TASK_BATCH
    else:
        size = min(batch_size, limit) if limit > 0 else batch_size
    return TaskBatch(items=[], rows=len(inputs), size=size, index=None, inputs=inputs)


def raise_batch_error(error: BatchError) -> NoReturn:
    """When no input got an answer, the first chunk's own error says more than a BatchError
    (which carries nothing computed): raise that one."""
    if error.result is None and error.failures:
        raise error.failures[0].error from error
    raise error


# --- answers ------------------------------------------------------------------------------------


def _output(result: BatchResult, name: str) -> np.ndarray[Any, Any]:
    if name not in result.outputs:
        known = ", ".join(repr(n) for n in result.outputs) or "none"
        raise APIError(
            f"model {result.model_name!r} answered without an output {name!r} (outputs: {known})"
        )
    return result.outputs[name]


def embeddings_of(result: BatchResult, rows: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """The ``embedding`` output as float32 ``[rows, D]``."""
    array = np.asarray(_output(result, "embedding"), dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != rows:
        raise APIError(
            f"model {result.model_name!r} answered embeddings of shape {list(array.shape)} "
            f"for {rows} texts"
        )
    return array


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def classifications_of(result: BatchResult, inputs: TaskInputs) -> Classifications:
    """The ``label`` and ``score`` outputs as :class:`Classifications`."""
    labels = np.asarray(_output(result, "label"))
    scores = np.asarray(_output(result, "score"), dtype=np.float32)
    rows = len(inputs)
    if labels.ndim == 1:
        labels, scores = labels.reshape(rows, -1), scores.reshape(rows, -1)
    if labels.shape != scores.shape or labels.ndim != 2 or labels.shape[0] != rows:
        raise APIError(
            f"model {result.model_name!r} answered labels {list(labels.shape)} and scores "
            f"{list(scores.shape)} for {rows} inputs"
        )
    texts = np.empty(labels.shape, dtype=object)
    for index, value in np.ndenumerate(labels):
        texts[index] = _text(value)
    return Classifications(
        texts,
        scores,
        kind=inputs.kind,
        sources=inputs.sources,
        model_name=result.model_name,
        model_version=result.model_version,
        timing=result.timing,
        request_ids=result.request_ids,
    )
