"""The data plane: what each protocol call does, with no knowledge of HTTP.

Routes parse requests and format answers; everything that decides (which model, whether the
inputs fit it, what comes back) happens here and raises :mod:`maas_server.errors` when it must say
no. Inputs are checked against the model before anything runs, so a bad request fails alone and
with a message that names the input, what was expected and what was received.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import onnxruntime as ort

from maas_wire.codec import (
    DATATYPES,
    CodecError,
    decode_binary_tensor,
    element_count,
    wire_nbytes,
)
from maas_wire.protocol import TensorPayload
from maas_wire.types import InferenceRequest, RequestInput, RequestOutput

from . import __version__
from .batching import ClientDisconnected, DrainRate, QueueFullError, Scheduler, retry_headers
from .errors import BadRequestError, InternalError, PayloadTooLargeError, ServerError
from .model_version import ModelVersion
from .pipeline import Pipeline, wants_pipeline
from .repository import ModelRepository
from .runtime import TensorSpec
from .settings import Settings
from .worker_store import Change
from .worker_sync import WorkerSync

__all__ = ["EXTENSIONS", "MAX_EMBEDDING_INPUTS", "DataPlane", "Embeddings", "InferenceResult"]

logger = logging.getLogger("maas_server")

EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "model_repository",
    "model_configuration",
    "schedule_policy",
    "parameters",
    "statistics",
    "generate",
]

MAX_EMBEDDING_INPUTS = 2048
"""The most texts (or token lists) one ``/v1/embeddings`` request may hold, as OpenAI's."""

_FINISH_OFFLOAD = 1 << 20  # output elements ranked (top-k) on a worker thread from this many
_TEXT_OFFLOAD = 10_000  # BYTES elements converted to text on a worker thread from this many

_CLIENT_FAULTS = (
    ort.capi.onnxruntime_pybind11_state.InvalidArgument,
    ort.capi.onnxruntime_pybind11_state.Fail,
)


class InferenceResult:
    """The outputs of one request, ready to be encoded."""

    def __init__(
        self, model: ModelVersion, request_id: str | None, outputs: list[TensorPayload]
    ) -> None:
        self.model_name = model.name
        self.model_version = str(model.version)
        self.request_id = request_id
        self.outputs = outputs


class Embeddings:
    """The answer of :meth:`DataPlane.embed`: one row per input, and the tokens they took."""

    def __init__(self, model: ModelVersion, vectors: np.ndarray[Any, Any], tokens: int) -> None:
        self.model_name = model.name
        self.vectors = vectors
        self.tokens = tokens


def _describe(spec: TensorSpec) -> str:
    return f"{spec.datatype} {list(spec.shape)}"


class DataPlane:
    """Server, model and inference calls over one :class:`ModelRepository`."""

    def __init__(self, repository: ModelRepository, settings: Settings) -> None:
        self.repository = repository
        self.settings = settings
        self.started = False
        self.sync: WorkerSync | None = None
        """With several workers: the control plane the repository changes go through."""
        self._inflight = 0
        self._drain = DrainRate()

    # --- server -----------------------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "name": "maas",
            "version": __version__,
            "extensions": EXTENSIONS,
        }
        if self.sync is not None:  # which process of maas serve --workers N answers
            metadata["maas_worker"] = {**self.sync.describe(), "cpus": self.settings.cpus}
        return metadata

    def ready(self) -> bool:
        if not self.started:
            return False
        return self.repository.all_ready() if self.settings.strict_readiness else True

    # --- models -----------------------------------------------------------------------------

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        model = self.repository.get(name, version)
        record = self.repository.record(name)
        parameters: dict[str, Any] = {
            "providers": model.providers,
            "requested_providers": model.requested_providers,
            "max_batch_size": model.max_batch_size,
        }
        inputs, outputs = model.inputs, model.outputs
        if model.pipeline is not None:
            # the pipeline's tensors; the model's own under raw_inputs / raw_outputs (what a
            # request with the parameter "pipeline": false sends and gets)
            parameters.update(model.pipeline.metadata())
            parameters["raw_inputs"] = [s.as_metadata() for s in inputs]
            parameters["raw_outputs"] = [s.as_metadata() for s in outputs]
            inputs, outputs = model.pipeline.inputs, model.pipeline.outputs
        return {
            "name": name,
            "versions": [str(v) for v in record.ready_versions()],
            "platform": "onnx_onnxv1",
            "inputs": [s.as_metadata() for s in inputs],
            "outputs": [s.as_metadata() for s in outputs],
            "parameters": parameters,
        }

    def model_ready(self, name: str, version: str | None) -> bool:
        try:
            self.repository.get(name, version)
        except ServerError as exc:
            if exc.status_code == 503:
                return False
            raise
        return True

    def model_config(self, name: str, version: str | None) -> dict[str, Any]:
        """The configuration in Triton's model_config shape, plus what maas adds."""
        model = self.repository.get(name, version)
        config = model.config
        batched = model.max_batch_size > 0

        def dims(spec: TensorSpec) -> list[int]:
            return list(spec.shape[1:] if batched else spec.shape)

        gpu = any(
            p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") for p in model.providers
        )
        return {
            "name": name,
            "platform": "onnx_onnxv1",
            "backend": "onnxruntime",
            "max_batch_size": model.max_batch_size,
            "input": [
                {"name": s.name, "data_type": f"TYPE_{_triton_type(s.datatype)}", "dims": dims(s)}
                for s in model.inputs
            ],
            "output": [
                {
                    "name": s.name,
                    "data_type": f"TYPE_{_triton_type(s.datatype)}",
                    "dims": dims(s),
                    **({"label_filename": config.labels} if isinstance(config.labels, str) else {}),
                }
                for s in model.outputs
            ],
            "instance_group": [
                {"count": config.instance_count, "kind": "KIND_GPU" if gpu else "KIND_CPU"}
            ],
            "version_policy": config.version_policy.model_dump(exclude_none=True),
            "execution_providers": {
                "requested": model.requested_providers,
                "active": model.providers,
                "fell_back_to_cpu": model.fell_back_to_cpu,
            },
            "optimization": {"graph": {"level": config.graph_optimization_level}},
            "warmup": config.warmup,
            "require_gpu": config.require_gpu,
        }

    # --- repository -------------------------------------------------------------------------

    def repository_index(self, ready_only: bool) -> list[dict[str, Any]]:
        return self.repository.index(ready_only)

    async def load_model(self, name: str, config_override: str | None) -> None:
        since = self.sync.mark() if self.sync is not None else 0
        record = await asyncio.to_thread(self.repository.load, name, config_override)
        if self.sync is not None:  # every worker serves what this one now does
            await self.sync.changed(Change("load", name, config_override), since)
        if record.state != "READY":
            raise BadRequestError(f"failed to load model {name!r}: {record.reason}")

    async def unload_model(self, name: str) -> None:
        since = self.sync.mark() if self.sync is not None else 0
        await asyncio.to_thread(self.repository.unload, name)
        if self.sync is not None:
            await self.sync.changed(Change("unload", name), since)

    # --- inference --------------------------------------------------------------------------

    async def infer(
        self,
        name: str,
        version: str | None,
        request: InferenceRequest,
        tensors: dict[str, np.ndarray[Any, Any]],
        disconnected: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> InferenceResult:
        model = self.repository.get(name, version)
        if model.pipeline is not None and wants_pipeline(request):
            return await self._infer_pipeline(model, model.pipeline, request, tensors, disconnected)
        try:
            if sum(a.size for a in tensors.values() if a.dtype == object) >= _TEXT_OFFLOAD:
                # turning many BYTES elements into text would hold the event loop
                feeds = await asyncio.to_thread(self._feeds, model, request, tensors)
            else:
                feeds = self._feeds(model, request, tensors)
            wanted = self._outputs(model, request)
            priority, timeout_us = _schedule_parameters(request)
        except BadRequestError:
            model.stats.record_failure(0, "invalid_request")
            raise
        results = await self._schedule(
            model,
            model.scheduler,
            feeds,
            [o.name for o in wanted],
            priority,
            timeout_us,
            disconnected,
        )
        binary_default = bool((request.parameters or {}).get("binary_data_output", False))
        outputs = [self._output(model, out, results[out.name], binary_default) for out in wanted]
        return InferenceResult(model, request.id, outputs)

    async def _infer_pipeline(
        self,
        model: ModelVersion,
        pipeline: Pipeline,
        request: InferenceRequest,
        tensors: dict[str, np.ndarray[Any, Any]],
        disconnected: Callable[[], Coroutine[Any, Any, None]] | None,
    ) -> InferenceResult:
        """A request through the model's steps: BYTES texts or images in, the pipeline's
        outputs back."""
        try:
            shapes = {i.name: list(tensors[i.name].shape) for i in request.inputs}
            pipeline.check_request(model.name, request, shapes)
            top = pipeline.top_k(request)
            name = pipeline.input_name
            array = tensors[name]
            if pipeline.offload(array.size):
                feeds = await asyncio.to_thread(pipeline.prepare, name, array)
            else:
                feeds = pipeline.prepare(name, array)
            priority, timeout_us = _schedule_parameters(request)
        except BadRequestError:
            model.stats.record_failure(0, "invalid_request")
            raise
        results = await self._run_pipeline(model, feeds, priority, timeout_us, disconnected)
        if sum(a.size for a in results.values()) >= _FINISH_OFFLOAD:
            outputs = await asyncio.to_thread(pipeline.finish, results, top)
        else:
            outputs = pipeline.finish(results, top)
        wanted = request.outputs or [RequestOutput(name=s.name) for s in pipeline.outputs]
        binary_default = bool((request.parameters or {}).get("binary_data_output", False))
        payloads = []
        for out in wanted:
            binary = bool((out.parameters or {}).get("binary_data", binary_default))
            spec = pipeline.output_by_name[out.name]
            payloads.append(TensorPayload(out.name, outputs[out.name], spec.datatype, binary))
        return InferenceResult(model, request.id, payloads)

    async def _run_pipeline(
        self,
        model: ModelVersion,
        feeds: dict[str, np.ndarray[Any, Any]],
        priority: int | None,
        timeout_us: int | None,
        disconnected: Callable[[], Coroutine[Any, Any, None]] | None,
    ) -> dict[str, np.ndarray[Any, Any]]:
        scheduler = model.pipeline_scheduler
        assert scheduler is not None and model.pipeline is not None
        outputs = [s.name for s in model.pipeline.runner.outputs]
        return await self._schedule(
            model, scheduler, feeds, outputs, priority, timeout_us, disconnected
        )

    async def _schedule(
        self,
        model: ModelVersion,
        scheduler: Scheduler,
        feeds: dict[str, np.ndarray[Any, Any]],
        outputs: list[str],
        priority: int | None,
        timeout_us: int | None,
        disconnected: Callable[[], Coroutine[Any, Any, None]] | None,
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Run feeds through one of the model's schedulers, counted in flight; the model's
        refusals are 400s, anything else a logged 500."""
        self.check_inflight(model)
        self._inflight += 1
        try:
            return await scheduler.infer(feeds, outputs, priority, timeout_us, disconnected)
        except (ServerError, ClientDisconnected):
            raise
        except _CLIENT_FAULTS as exc:
            raise BadRequestError(f"model {model.name!r} refused the inputs: {exc}") from None
        except Exception as exc:
            logger.exception("inference failed on model %s", model.name)
            raise InternalError(f"inference failed on model {model.name!r}: {exc}") from None
        finally:
            self._inflight -= 1
            self._drain.add(1)

    async def embed(
        self,
        name: str,
        inputs: list[str] | list[list[int]],
        dimensions: int | None = None,
        disconnected: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> Embeddings:
        """Embeddings of texts (or token id lists) from an embedding model's newest version:
        what ``POST /v1/embeddings`` answers."""
        model = self.repository.get(name, None)
        pipeline = model.pipeline
        if pipeline is None or pipeline.task != "embedding":
            raise BadRequestError(f"model {name!r} is not an embedding model")
        try:
            if not inputs:
                raise BadRequestError("input 'input' is empty: give at least one text")
            if len(inputs) > MAX_EMBEDDING_INPUTS:
                raise BadRequestError(
                    f"input 'input' holds {len(inputs)} elements; at most "
                    f"{MAX_EMBEDDING_INPUTS} per request"
                )
            pipeline.check_dimensions(dimensions)
            if isinstance(inputs[0], str):
                texts = np.empty(len(inputs), dtype=object)
                texts[:] = inputs
                if pipeline.offload(len(inputs)):
                    feeds = await asyncio.to_thread(pipeline.prepare, "input", texts)
                else:
                    feeds = pipeline.prepare("input", texts)
            else:
                feeds = pipeline.prepare_ids([list(map(int, ids)) for ids in inputs])
        except BadRequestError:
            model.stats.record_failure(0, "invalid_request")
            raise
        results = await self._run_pipeline(model, feeds, None, None, disconnected)
        vectors = pipeline.finish(results, 1, dimensions)["embedding"]
        return Embeddings(model, vectors, int(results["tokens"].sum()))

    def check_inflight(self, model: ModelVersion) -> None:
        """503 with ``Retry-After`` when the server is at its limit of requests in flight
        (checked again, before any body is decoded, by the route)."""
        if self.settings.max_inflight and self._inflight >= self.settings.max_inflight:
            model.stats.record_failure(0, "inflight_limit")
            wait = self._drain.retry_after(self._inflight)
            raise QueueFullError(
                f"the server is at its limit of {self.settings.max_inflight} requests in "
                f"flight; retry in {wait:.2f} s",
                headers=retry_headers(wait),
            )

    def raw_request(
        self, model: ModelVersion, body: bytes | bytearray
    ) -> tuple[InferenceRequest, dict[str, Any]]:
        """A request from a raw body (``Inference-Header-Content-Length: 0``): the whole body is
        the only input's bytes, a batch-1 request whose outputs all come back binary. For a
        pipeline model, the body is one text or one encoded image."""
        if model.pipeline is not None:
            array = np.empty(1, dtype=object)
            array[0] = bytes(body)
            name = model.pipeline.input_name
            request = InferenceRequest(
                inputs=[RequestInput(name=name, shape=[1], datatype="BYTES")],
                parameters={"binary_data_output": True},
            )
            return request, {name: array}
        if len(model.inputs) != 1:
            raise BadRequestError(
                f"a raw binary request needs a model with one input; {model.name!r} has "
                f"{len(model.inputs)}"
            )
        spec = model.inputs[0]
        dims = list(spec.shape)
        if model.max_batch_size > 0:
            dims[0] = 1
        variable = [i for i, d in enumerate(dims) if d == -1]
        if len(variable) > 1:
            raise BadRequestError(
                f"a raw binary request needs at most one variable dimension; input "
                f"{spec.name!r} has shape {list(spec.shape)}"
            )
        if spec.datatype == "BYTES":
            if dims not in ([1], [-1]):
                raise BadRequestError("a raw BYTES request needs an input of shape [1]")
            shape = [1]
            array = np.empty(1, dtype=object)
            array[0] = bytes(body)
        else:
            itemsize = DATATYPES[spec.datatype].itemsize
            known = element_count([d for d in dims if d != -1]) * itemsize
            if variable:
                if known == 0 or len(body) % known:
                    raise BadRequestError(
                        f"raw body of {len(body)} bytes is not a whole number of "
                        f"{spec.datatype} rows of shape {list(spec.shape)}"
                    )
                dims[variable[0]] = len(body) // known
            shape = dims
            try:
                array = decode_binary_tensor(memoryview(body), spec.datatype, shape)
            except CodecError as exc:
                raise BadRequestError(f"input {spec.name!r}: {exc}") from None
        request = InferenceRequest(
            inputs=[RequestInput(name=spec.name, shape=shape, datatype=spec.datatype)],
            parameters={"binary_data_output": True},
        )
        return request, {spec.name: array}

    def precheck(self, model: ModelVersion, request: InferenceRequest) -> None:
        """:meth:`check_inputs` before decoding; a refusal counts in the model's statistics as
        the same refusal found after decoding would (``invalid_request``). A binary tensor
        whose size disagrees with its own shape is a malformed body, refused as decoding would
        refuse it: before the model, not counted."""
        max_elements = self.settings.max_tensor_elements
        for entry in request.inputs:
            if "binary_data_size" in (entry.parameters or {}):
                _check_declared_size(entry, max_elements)
        try:
            if model.pipeline is not None and wants_pipeline(request):
                model.pipeline.check_request(model.name, request, None)
                return
            self.check_inputs(model, request)
        except BadRequestError:
            model.stats.record_failure(0, "invalid_request")
            raise

    def check_inputs(
        self,
        model: ModelVersion,
        request: InferenceRequest,
        shapes: dict[str, list[int]] | None = None,
    ) -> None:
        """The inputs against the model: names, datatypes, shapes and batch size.

        Called twice. Before decoding (``shapes`` None, from :meth:`precheck`, which first checks
        each binary tensor's ``binary_data_size`` against its shape and the element limit) it
        checks the names and each *binary* tensor's datatype, so that no BYTES tensor is parsed
        for a request that cannot run (JSON tensors are parsed with the header anyway, and are
        checked once decoded, where the codec says first what is wrong with their data). After
        decoding, ``shapes`` holds the arrays' shapes and every input is checked, shapes too."""
        given = {i.name for i in request.inputs}
        if len(given) < len(request.inputs):
            names = [i.name for i in request.inputs]
            twice = next(n for i, n in enumerate(names) if n in names[:i])
            raise BadRequestError(f"input {twice!r} appears more than once")
        unknown = sorted(given - model.input_by_name.keys())
        if unknown:
            known = ", ".join(f"{s.name!r} ({_describe(s)})" for s in model.inputs)
            raise BadRequestError(
                f"model {model.name!r} has no input {unknown[0]!r}; its inputs are {known}"
            )
        missing = [s for s in model.inputs if s.name not in given]
        if missing:
            spec = missing[0]
            raise BadRequestError(
                f"model {model.name!r} needs input {spec.name!r} ({_describe(spec)}), which the "
                "request does not give"
            )
        batch: int | None = None
        for entry in request.inputs:
            if shapes is None and "binary_data_size" not in (entry.parameters or {}):
                continue
            spec = model.input_by_name[entry.name]
            if entry.datatype != spec.datatype:
                raise BadRequestError(
                    f"input {entry.name!r}: expected datatype {spec.datatype}, got {entry.datatype}"
                )
            if shapes is None:
                # the shape against the model waits for decoding, whose own message about a
                # malformed tensor comes first; fixed-size tensors decode without a copy
                continue
            shape = shapes[entry.name]
            if len(shape) != len(spec.shape) or any(
                want != -1 and want != got for want, got in zip(spec.shape, shape, strict=True)
            ):
                raise BadRequestError(
                    f"input {entry.name!r}: expected shape {list(spec.shape)}, got {shape}"
                )
            if model.max_batch_size > 0:
                if shape[0] > model.max_batch_size:
                    raise BadRequestError(
                        f"input {entry.name!r}: batch of {shape[0]} exceeds the model's "
                        f"max_batch_size {model.max_batch_size}"
                    )
                if batch is not None and shape[0] != batch:
                    raise BadRequestError(
                        f"input {entry.name!r}: batch size {shape[0]} differs from the other "
                        f"inputs' {batch}"
                    )
                batch = shape[0]

    def _feeds(
        self,
        model: ModelVersion,
        request: InferenceRequest,
        tensors: dict[str, np.ndarray[Any, Any]],
    ) -> dict[str, np.ndarray[Any, Any]]:
        shapes = {i.name: list(tensors[i.name].shape) for i in request.inputs if i.name in tensors}
        self.check_inputs(model, request, shapes)
        feeds: dict[str, np.ndarray[Any, Any]] = {}
        for entry in request.inputs:
            array = tensors[entry.name]
            if model.input_by_name[entry.name].datatype == "BYTES":
                array = _to_text(entry.name, array)
            feeds[entry.name] = array
        return feeds

    def _outputs(self, model: ModelVersion, request: InferenceRequest) -> list[RequestOutput]:
        if not request.outputs:
            return [RequestOutput(name=s.name) for s in model.outputs]
        seen: set[str] = set()
        for out in request.outputs:
            if out.name not in model.output_by_name:
                known = ", ".join(repr(s.name) for s in model.outputs)
                raise BadRequestError(
                    f"model {model.name!r} has no output {out.name!r}; its outputs are {known}"
                )
            if out.name in seen:
                raise BadRequestError(f"output {out.name!r} is requested more than once")
            seen.add(out.name)
            k = (out.parameters or {}).get("classification")
            if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
                raise BadRequestError(
                    f"output {out.name!r}: classification must be a positive integer, not {k!r}"
                )
        return request.outputs

    def _output(
        self,
        model: ModelVersion,
        out: RequestOutput,
        array: np.ndarray[Any, Any],
        binary_default: bool,
    ) -> TensorPayload:
        params = out.parameters or {}
        binary = bool(params.get("binary_data", binary_default))
        datatype = model.output_by_name[out.name].datatype
        if "classification" in params:
            array, datatype = _classify(model, out.name, array, int(params["classification"]))
        elif datatype == "BYTES":
            array = _to_bytes(array)
        return TensorPayload(out.name, array, datatype, binary)


def _check_declared_size(entry: RequestInput, max_elements: int) -> None:
    """``binary_data_size`` against the declared shape (400), then the element limit (413)."""
    try:
        count = element_count(entry.shape)
    except CodecError as exc:
        raise BadRequestError(f"input {entry.name!r}: {exc}") from None
    size = (entry.parameters or {}).get("binary_data_size")
    if isinstance(size, int) and not isinstance(size, bool):  # else decoding reports it
        if entry.datatype == "BYTES":
            if size < 4 * count:
                raise BadRequestError(
                    f"input {entry.name!r}: binary_data_size {size} cannot hold {count} BYTES "
                    "elements (4 bytes of length each)"
                )
        else:
            expected = wire_nbytes(entry.datatype, entry.shape)
            if expected is not None and size != expected:
                raise BadRequestError(
                    f"input {entry.name!r}: {entry.datatype} tensor of shape "
                    f"{list(entry.shape)} needs {expected} bytes, got {size} (binary_data_size)"
                )
    if max_elements and count > max_elements:
        raise PayloadTooLargeError(
            f"input {entry.name!r} has {count} elements; the server's limit is {max_elements}"
        )


def _schedule_parameters(request: InferenceRequest) -> tuple[int | None, int | None]:
    """The ``priority`` and ``timeout`` (microseconds) request parameters, checked."""
    parameters = request.parameters or {}
    values: list[int | None] = []
    for key in ("priority", "timeout"):
        value = parameters.get(key)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 0
        ):
            raise BadRequestError(
                f"parameter {key!r} must be a non-negative integer, not {value!r}"
            )
        values.append(value)
    return values[0], values[1]


def _triton_type(datatype: str) -> str:
    return "STRING" if datatype == "BYTES" else datatype


def _to_text(name: str, array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """BYTES elements as the ``str`` objects onnxruntime's string tensors need."""
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for i, element in enumerate(array.flat):
        try:
            flat[i] = element.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequestError(
                f"input {name!r}: element {i} is not valid UTF-8; ONNX string tensors hold text"
            ) from None
    return out


def _to_bytes(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for i, element in enumerate(array.flat):
        flat[i] = element.encode("utf-8") if isinstance(element, str) else bytes(element)
    return out


def _classify(
    model: ModelVersion, name: str, array: np.ndarray[Any, Any], k: int
) -> tuple[np.ndarray[Any, Any], str]:
    """Triton's classification extension: the top ``k`` of each row as ``value:index[:label]``."""
    if array.dtype.kind not in "fiu":
        raise BadRequestError(f"output {name!r}: classification needs a numeric output")
    batched = model.max_batch_size > 0 and array.ndim >= 1
    rows = array.reshape(array.shape[0], -1) if batched else array.reshape(1, -1)
    k = min(k, rows.shape[1])
    top = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    labels = model.labels or []
    out = np.empty((rows.shape[0], k), dtype=object)
    for r in range(rows.shape[0]):
        for c, index in enumerate(top[r]):
            text = f"{rows[r, index]:f}:{index}"
            if index < len(labels):
                text += f":{labels[index]}"
            out[r, c] = text.encode("utf-8")
    return (out if batched else out.reshape(k)), "BYTES"
