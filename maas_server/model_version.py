"""One loaded version of a model and everything that serves it, owned in one place.

A :class:`ModelVersion` owns the version's ONNX Runtime sessions and their thread pool
(:class:`~maas_server.runtime.OnnxModel`), its :class:`~maas_server.batching.Scheduler`, its
:class:`~maas_server.stats.ModelStats` and, for a text-generation model, its generation engine.
Ownership points one way: the scheduler refers to the sessions and the statistics, the engine to
the sessions (weakly) and the statistics, and none of them refers back to the version, so a
version that nobody serves any more is freed by reference counting alone.

When the repository replaces or unloads a version it calls :meth:`ModelVersion.retire`: new
requests go to the new version at once, the requests already in flight on this one finish
(``pending`` in its statistics drops to 0, or the drain timeout passes), then :meth:`close` stops
the engine, joins the pool's threads and lets go of the sessions.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import onnxruntime as ort

from .batching import Scheduler
from .config import ModelConfig
from .errors import ModelUnavailableError
from .pipeline import Pipeline
from .runtime import OnnxModel, TensorSpec
from .settings import DEFAULT_MAX_QUEUE_SIZE
from .stats import ModelStats

__all__ = ["Engine", "ModelVersion"]

logger = logging.getLogger("maas_server")


class Engine(Protocol):
    """What a version needs of its generation engine: to stop it."""

    def close(self, timeout: float = ...) -> None: ...


class ModelVersion:
    """A loaded model version: sessions, scheduler, statistics and generation engine.

    The description of the model (``name``, ``inputs``, ``config``, ...) is read from its
    sessions (:attr:`onnx`).
    """

    def __init__(
        self,
        onnx: OnnxModel,
        *,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        pipeline: Pipeline | None = None,
    ) -> None:
        self.onnx = onnx
        self.stats = ModelStats()
        self.scheduler = Scheduler(onnx, self.stats, max_queue_size)
        self.pipeline = pipeline
        # a pipeline model's requests queue and batch here, the raw ones ("pipeline": false)
        # in ``scheduler``; both count in the same statistics
        self.pipeline_scheduler = (
            Scheduler(pipeline.runner, self.stats, max_queue_size) if pipeline else None
        )
        self.engine: Engine | None = None
        self._lock = threading.Lock()
        self._retired = False
        self._closing = False
        self._closed = threading.Event()

    # --- what the model is ------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.onnx.name

    @property
    def version(self) -> int:
        return self.onnx.version

    @property
    def config(self) -> ModelConfig:
        return self.onnx.config

    @property
    def labels(self) -> list[str] | None:
        return self.onnx.labels

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.onnx.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.onnx.outputs

    @property
    def input_by_name(self) -> dict[str, TensorSpec]:
        return self.onnx.input_by_name

    @property
    def output_by_name(self) -> dict[str, TensorSpec]:
        return self.onnx.output_by_name

    @property
    def max_batch_size(self) -> int:
        return self.onnx.max_batch_size

    @property
    def providers(self) -> list[str]:
        return self.onnx.providers

    @property
    def requested_providers(self) -> list[str]:
        return self.onnx.requested_providers

    @property
    def fell_back_to_cpu(self) -> bool:
        return self.onnx.fell_back_to_cpu

    @contextmanager
    def session(self) -> Iterator[ort.InferenceSession]:
        """Borrow an idle instance's session (see :meth:`OnnxModel.session`)."""
        with self.onnx.session() as session:
            yield session

    # --- lifetime -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once closing has begun: new requests are refused."""
        return self._closing

    def attach_engine(self, engine: Engine) -> Engine:
        """Make ``engine`` this version's generation engine, closed with it; the engine already
        attached wins a race. A closed version refuses (503) and closes ``engine``."""
        with self._lock:
            if not self._closing:
                if self.engine is None:
                    self.engine = engine
                    return engine
                if self.engine is engine:
                    return engine
                current = self.engine
            else:
                current = None
        engine.close()
        if current is None:
            raise ModelUnavailableError(
                f"model {self.name!r} version {self.version} was unloaded or replaced; retry"
            )
        return current

    def retire(self, drain_timeout_s: float) -> None:
        """Stop serving: close once the requests in flight are done (a thread waits for them,
        at most ``drain_timeout_s``). Call it after the repository stopped handing it out."""
        with self._lock:
            if self._retired:
                return
            self._retired = True
        threading.Thread(
            target=self._close_after_drain,
            args=(drain_timeout_s,),
            name=f"maas-close-{self.name}-{self.version}",
            daemon=True,
        ).start()

    def _close_after_drain(self, timeout_s: float) -> None:
        if not self.stats.wait_idle(timeout_s):
            logger.warning(
                "model %s version %s: %d request(s) still in flight after %.0f s; closing it",
                self.name,
                self.version,
                self.stats.pending,
                timeout_s,
            )
        self.close()

    def close(self) -> None:
        """Refuse new requests, stop the engine, join the threads and release the sessions.
        Blocking (call it from a worker thread when the server is up); idempotent."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            engine, self.engine = self.engine, None
        try:
            self.scheduler.close()
            if self.pipeline_scheduler is not None:
                self.pipeline_scheduler.close()
            if engine is not None:
                engine.close()
            if self.pipeline is not None:
                self.pipeline.close()
            self.onnx.close()
        finally:
            self._closed.set()
        logger.info("model %s version %s closed", self.name, self.version)

    def wait_closed(self, timeout_s: float) -> bool:
        """Wait until :meth:`close` has finished; False on timeout."""
        return self._closed.wait(timeout_s)
