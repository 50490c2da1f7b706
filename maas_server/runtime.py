"""The ONNX Runtime sessions of one model version and the threads that run them.

Sessions run in a thread pool with one worker per instance, so inference never stalls the event
loop. What the model's tensors look like is read from the graph (and the configuration's
overrides); which execution providers really run it is read back from the session
(``session.get_providers()``), never assumed from what was asked for.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import queue
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort

from maas_wire.codec import DATATYPES

from .config import ConfigError, ExecutionProvider, ModelConfig
from .errors import ModelUnavailableError
from .threads import SMALL_MODEL_US, available_cpus

T = TypeVar("T")

__all__ = [
    "GPU_PROVIDERS",
    "ModelLoadError",
    "OnnxModel",
    "TensorSpec",
    "default_providers",
    "instance_providers",
    "read_labels",
]

logger = logging.getLogger("maas_server")

GPU_PROVIDERS = frozenset(
    {"CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider"}
)

_ONNX_TO_DATATYPE = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16",
    "tensor(string)": "BYTES",
}
_BFLOAT16 = 16  # onnx.TensorProto.BFLOAT16

_OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_CPU_THREAD_OPTIONS = ("intra_op_num_threads", "inter_op_num_threads")


class ModelLoadError(Exception):
    """A model version that cannot be served; the message is the reason shown in the index."""


@dataclass(frozen=True)
class TensorSpec:
    """An input or output as the protocol describes it: ``-1`` marks a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def default_providers() -> list[ExecutionProvider]:
    """CUDA when this onnxruntime build has it, then CPU."""
    available = ort.get_available_providers()
    names = [p for p in ("CUDAExecutionProvider",) if p in available]
    return [ExecutionProvider(name=n) for n in [*names, "CPUExecutionProvider"]]


def _spec(node: Any, override: list[int] | None) -> TensorSpec:
    try:
        datatype = _ONNX_TO_DATATYPE[node.type]
    except KeyError:
        raise ModelLoadError(
            f"{node.name!r} has type {node.type}, which the protocol cannot carry"
        ) from None
    shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in (node.shape or []))
    if override is not None:
        if len(override) != len(shape) or any(
            fixed != -1 and fixed != wanted for fixed, wanted in zip(shape, override, strict=True)
        ):
            raise ModelLoadError(
                f"configured shape {override} for {node.name!r} does not fit the graph's "
                f"{list(shape)}"
            )
        shape = tuple(override)
    return TensorSpec(node.name, datatype, shape)


class OnnxModel:
    """The sessions of one version of one model, ready to run.

    Build it with :meth:`load` (blocking: call it from a worker thread when the server is up),
    then ``await model.run(feeds, output_names)``; :meth:`close` joins its threads and lets go
    of its sessions. It knows nothing of queues or statistics (see
    :class:`~maas_server.model_version.ModelVersion`, which owns it).
    """

    def __init__(
        self,
        name: str,
        version: int,
        config: ModelConfig,
        sessions: list[ort.InferenceSession],
        requested_providers: list[str],
        labels: list[str] | None,
    ) -> None:
        self.name = name
        self.version = version
        self.config = config
        self.labels = labels
        self.requested_providers = requested_providers
        self.providers: list[str] = list(sessions[0].get_providers())
        overrides_in = {t.name: t.shape for t in config.inputs}
        overrides_out = {t.name: t.shape for t in config.outputs}
        self.inputs = [_spec(n, overrides_in.get(n.name)) for n in sessions[0].get_inputs()]
        self.outputs = [_spec(n, overrides_out.get(n.name)) for n in sessions[0].get_outputs()]
        self.input_by_name = {s.name: s for s in self.inputs}
        self.output_by_name = {s.name: s for s in self.outputs}
        self._check_overrides(overrides_in, overrides_out)
        self._check_batching()
        self._uses_bf16 = any(s.datatype == "BF16" for s in (*self.inputs, *self.outputs))
        self._sessions = list(sessions)
        self._idle: queue.SimpleQueue[ort.InferenceSession] = queue.SimpleQueue()
        for session in sessions:
            self._idle.put(session)
        self._executor = ThreadPoolExecutor(
            max_workers=len(sessions), thread_name_prefix=f"maas-{name}-{version}"
        )
        self.run_time_us: float | None = None
        self.inline_max_elements = 0
        self.intra_op_threads = 1  # set by load
        self._closed = False

    @property
    def max_batch_size(self) -> int:
        return self.config.max_batch_size

    @property
    def fell_back_to_cpu(self) -> bool:
        """True when a GPU provider was asked for but the session does not use one."""
        asked = any(p in GPU_PROVIDERS for p in self.requested_providers)
        return asked and not any(p in GPU_PROVIDERS for p in self.providers)

    def _check_overrides(self, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        for kind, names, known in (
            ("input", inputs, self.input_by_name),
            ("output", outputs, self.output_by_name),
        ):
            unknown = sorted(set(names) - set(known))
            if unknown:
                raise ModelLoadError(f"configuration names unknown {kind}(s): {', '.join(unknown)}")

    def _check_batching(self) -> None:
        if self.max_batch_size == 0:
            return
        for spec in (*self.inputs, *self.outputs):
            if not spec.shape or spec.shape[0] != -1:
                raise ModelLoadError(
                    f"max_batch_size is {self.max_batch_size} but {spec.name!r} has shape "
                    f"{list(spec.shape)}: a batched model needs a variable first dimension on "
                    "every input and output"
                )

    @classmethod
    def load(
        cls,
        name: str,
        version: int,
        path: Path,
        config: ModelConfig,
        labels: list[str] | None = None,
        inline_threshold_us: float = 0.0,
        intra_op_threads: int | None = None,
        small_model_us: float = SMALL_MODEL_US,
    ) -> OnnxModel:
        """Create the sessions of a model file; raise :class:`ModelLoadError` with the reason.

        Each session gets ``intra_op_threads`` intra-op threads (default: the CPUs this process
        may use, split between the instances) and one inter-op thread, unless the configuration
        sets ``intra_op_num_threads`` in its CPU provider options. A model whose warm dummy run
        takes less than ``small_model_us`` runs single-threaded: its sessions are made again
        with one thread."""
        requested = config.providers() or default_providers()
        available = set(ort.get_available_providers())
        usable = [p for p in requested if p.name in available]
        missing = [p.name for p in requested if p.name not in available]
        if missing:
            logger.warning(
                "model %s: providers %s are not in this onnxruntime build (it has %s)",
                name,
                ", ".join(missing),
                ", ".join(sorted(available)),
            )
        if not usable:
            usable = [ExecutionProvider(name="CPUExecutionProvider")]
        requested_names = [p.name for p in requested]
        explicit = _explicit_threads(usable)
        threads = explicit or intra_op_threads or available_cpus() // config.instance_count
        threads = max(1, threads)

        def build(threads: int) -> OnnxModel:
            sessions = [
                cls._session(path, config, usable, index, threads)
                for index in range(config.instance_count)
            ]
            model = cls(name, version, config, sessions, requested_names, labels)
            model.intra_op_threads = threads
            return model

        model = build(threads)
        if threads > 1 and not explicit and config.task != "text-generation":
            warm_us = model.warm_run_us()
            if warm_us is not None and warm_us < small_model_us:
                model.close()
                model = build(1)
        if model.fell_back_to_cpu:
            message = (
                f"model {name} version {version} asked for {', '.join(requested_names)} but "
                f"ONNX Runtime runs it on {', '.join(model.providers)}"
            )
            if config.require_gpu:
                raise ModelLoadError(f"{message}, and require_gpu is set")
            logger.warning(message)
        elif config.require_gpu and not any(p in GPU_PROVIDERS for p in model.providers):
            raise ModelLoadError(
                f"require_gpu is set but ONNX Runtime runs it on {', '.join(model.providers)}"
            )
        logger.info(
            "model %s version %s loaded on %s (%d instance(s), %d intra-op thread(s) each)",
            name,
            version,
            ", ".join(model.providers),
            config.instance_count,
            model.intra_op_threads,
        )
        if config.warmup:
            model.warmup(config.warmup)
        if config.task != "text-generation":  # dummy inputs do not fit a decoder's KV cache
            model.measure_inline(inline_threshold_us)
        return model

    @staticmethod
    def _session(
        path: Path,
        config: ModelConfig,
        providers: list[ExecutionProvider],
        index: int,
        intra_op_threads: int,
    ) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.graph_optimization_level = _OPTIMIZATION_LEVELS[config.graph_optimization_level]
        options.log_severity_level = 3
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        provider_list = instance_providers(config, providers, index)
        for name, opts in provider_list:
            if name == "CPUExecutionProvider":
                for key in _CPU_THREAD_OPTIONS:
                    if key in opts:
                        setattr(options, key, int(opts.pop(key)))
        try:
            return ort.InferenceSession(str(path), sess_options=options, providers=provider_list)
        except Exception as exc:
            raise ModelLoadError(f"onnxruntime cannot load {path.name}: {exc}") from None

    def dummy_feeds(self) -> dict[str, np.ndarray[Any, Any]]:
        """Inputs of the right types with every variable dimension set to 1."""
        feeds: dict[str, np.ndarray[Any, Any]] = {}
        for spec in self.inputs:
            shape = tuple(1 if d == -1 else d for d in spec.shape)
            if spec.datatype == "BYTES":
                feeds[spec.name] = np.full(shape, "", dtype=object)
            elif spec.datatype == "BF16":
                feeds[spec.name] = np.zeros(shape, dtype=np.uint16)
            else:
                feeds[spec.name] = np.zeros(shape, dtype=DATATYPES[spec.datatype])
        return feeds

    def _time_dummy_runs(self, runs: int) -> tuple[float, int]:
        """Median microseconds of ``runs`` dummy requests, and their element count."""
        feeds = self.dummy_feeds()
        names = [s.name for s in self.outputs]
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.run_sync(feeds, names)
            times.append((time.perf_counter() - start) * 1e6)
        return statistics.median(times), sum(int(a.size) for a in feeds.values())

    def warm_run_us(self) -> float | None:
        """Median microseconds of a dummy request after a first one (None when it fails)."""
        try:
            self._time_dummy_runs(1)
            return self._time_dummy_runs(3)[0]
        except Exception:
            return None

    def warmup(self, runs: int) -> None:
        """Run ``runs`` dummy requests and remember the median run time."""
        try:
            self.run_time_us, _ = self._time_dummy_runs(runs)
        except Exception as exc:
            raise ModelLoadError(f"warmup failed: {exc}") from None

    def measure_inline(self, threshold_us: float) -> None:
        """Decide which requests may run inline on the event loop instead of in the pool.

        Handing a run to a worker thread and back costs tens of microseconds; for a model that
        runs in a few microseconds that is most of the work. Requests whose estimated run time
        (the measured time of a dummy request, scaled by element count) stays under
        ``threshold_us`` run inline. Models whose dummy request fails never run inline.
        """
        if threshold_us <= 0 or not self.inputs:
            return
        try:
            probe_us, elements = self._time_dummy_runs(5)
        except Exception:
            return
        if probe_us <= threshold_us:
            self.inline_max_elements = max(1, elements) * int(threshold_us // max(probe_us, 1.0))
        logger.debug(
            "model %s version %s: dummy run %.1f us, inline up to %d elements",
            self.name,
            self.version,
            probe_us,
            self.inline_max_elements,
        )

    @contextmanager
    def session(self) -> Iterator[ort.InferenceSession]:
        """Borrow an idle instance's session for a caller that drives it itself (the generation
        loop, which binds its own inputs and outputs); it goes back to the pool on exit."""
        if self._closed:
            raise self._unavailable()
        session = self._idle.get()
        try:
            yield session
        finally:
            self._idle.put(session)

    def run_sync(
        self, feeds: dict[str, np.ndarray[Any, Any]], output_names: list[str]
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Run one request on an idle instance (BYTES as ``str`` objects, BF16 as bits)."""
        if self._closed:
            raise self._unavailable()
        session = self._idle.get()
        try:
            return self._run_on(session, feeds, output_names)
        finally:
            self._idle.put(session)

    def _unavailable(self) -> ModelUnavailableError:
        return ModelUnavailableError(
            f"model {self.name!r} version {self.version} was unloaded or replaced; retry"
        )

    def _run_on(
        self,
        session: ort.InferenceSession,
        feeds: dict[str, np.ndarray[Any, Any]],
        output_names: list[str],
    ) -> dict[str, np.ndarray[Any, Any]]:
        if self._uses_bf16:
            return self._run_ort_values(session, feeds, output_names)
        results = session.run(output_names, feeds)
        return dict(zip(output_names, results, strict=True))

    def _run_ort_values(
        self,
        session: ort.InferenceSession,
        feeds: dict[str, np.ndarray[Any, Any]],
        output_names: list[str],
    ) -> dict[str, np.ndarray[Any, Any]]:
        values = {}
        for name, array in feeds.items():
            if self.input_by_name[name].datatype == "BF16":
                values[name] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                    np.ascontiguousarray(array), _BFLOAT16
                )
            else:
                values[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))
        results = session.run_with_ort_values(output_names, values)
        out: dict[str, np.ndarray[Any, Any]] = {}
        for name, value in zip(output_names, results, strict=True):
            if self.output_by_name[name].datatype == "BF16":
                shape = tuple(value.shape())
                count = int(np.prod(shape, dtype=np.int64))
                raw = memoryview((ctypes.c_uint16 * count).from_address(value.data_ptr()))
                out[name] = np.frombuffer(raw, dtype=np.uint16).copy().reshape(shape)
            else:
                out[name] = value.numpy()
        return out

    async def run(
        self,
        feeds: dict[str, np.ndarray[Any, Any]],
        output_names: list[str],
        on_late_return: Callable[[], None] | None = None,
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Run one request: inline when it is small enough and an instance is idle, else in the
        model's thread pool.

        Cancelling the caller does not stop a session call already running in its thread. With
        ``on_late_return``, a cancelled ``run`` promises to call it on the event loop exactly
        once, when the session is free again (at once when the call had not started), so that
        the caller can count the instance busy until then.
        """
        if self.inline_max_elements and (
            sum(int(a.size) for a in feeds.values()) <= self.inline_max_elements
        ):
            try:
                session = self._idle.get_nowait()
            except queue.Empty:
                pass
            else:
                try:
                    return self._run_on(session, feeds, output_names)
                finally:
                    self._idle.put(session)
        if self._closed:
            raise self._unavailable()
        loop = asyncio.get_running_loop()
        try:
            future = self._executor.submit(self.run_sync, feeds, output_names)
        except RuntimeError:
            if self._closed:  # closed between the check and the hand-over to the pool
                raise self._unavailable() from None
            raise
        return await wait_in_pool(future, loop, on_late_return)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def sessions(self) -> list[ort.InferenceSession]:
        """The instances' sessions (none once closed)."""
        return list(self._sessions)

    def close(self) -> None:
        """Join the worker threads once the runs already given to them are done, then let go of
        the sessions (their memory, on a GPU device memory, is freed at once). Idempotent."""
        self._closed = True
        self._executor.shutdown(wait=True)
        self._sessions.clear()
        while True:
            try:
                self._idle.get_nowait()
            except queue.Empty:
                break


def _explicit_threads(providers: list[ExecutionProvider]) -> int:
    """``intra_op_num_threads`` when the CPU provider's options set it, else 0."""
    for provider in providers:
        if provider.name == "CPUExecutionProvider" and "intra_op_num_threads" in provider.options:
            try:
                return max(0, int(provider.options["intra_op_num_threads"]))
            except (TypeError, ValueError):
                return 0  # refused when the session is made
    return 0


async def wait_in_pool(
    future: Future[T],
    loop: asyncio.AbstractEventLoop,
    on_late_return: Callable[[], None] | None = None,
) -> T:
    """The result of work handed to a thread pool. When the waiter is cancelled, work not
    started is cancelled; ``on_late_return`` is called on ``loop`` once the work is no longer
    running (at once, or when work already under way returns)."""
    try:
        return await asyncio.wrap_future(future, loop=loop)
    except asyncio.CancelledError:
        if on_late_return is not None:
            if future.cancelled() or future.cancel():
                on_late_return()
            else:
                late = on_late_return
                future.add_done_callback(lambda _: _call_soon(loop, late))
        raise


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Call ``callback`` on ``loop`` from another thread, unless the loop has closed since."""
    with suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)


def instance_providers(
    config: ModelConfig, providers: list[ExecutionProvider], index: int
) -> list[tuple[str, dict[str, Any]]]:
    """The providers and options of instance ``index``: with ``device_ids``, the instances take
    the listed GPUs in turn (their ``device_id``), overriding the provider's own option."""
    out: list[tuple[str, dict[str, Any]]] = []
    for provider in providers:
        opts: dict[str, Any] = dict(provider.options)
        if config.device_ids and provider.name in GPU_PROVIDERS:
            opts["device_id"] = config.device_ids[index % len(config.device_ids)]
        if provider.name != "CPUExecutionProvider":
            opts = {k: str(v) for k, v in opts.items()}
        out.append((provider.name, opts))
    return out


def read_labels(model_dir: Path, filename: str) -> list[str]:
    """The labels file of a model, one label a line, which must lie inside the model's folder."""
    root = model_dir.resolve()
    path = (model_dir / filename).resolve()
    if not path.is_relative_to(root):
        raise ConfigError(f"labels file {filename!r} lies outside the model's folder")
    try:
        return [
            line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
    except OSError as exc:
        raise ConfigError(f"cannot read labels file {filename!r}: {exc.strerror}") from None
