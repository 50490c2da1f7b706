"""Prometheus metrics under Triton's names, read from the models' statistics at scrape time.

Nothing is counted for the metrics on the request path: the scheduler already keeps
:class:`~maas_server.stats.ModelStats` per model version, and :class:`ServerCollector` turns them
into metric families when ``/metrics`` is scraped. Each app has its own ``CollectorRegistry``.

Triton's counters carry no ``_total`` suffix (``nv_inference_request_success``), and dashboards
query those names; prometheus_client adds the suffix to the ``# HELP``/``# TYPE`` lines of every
counter, so :func:`render` writes Triton's families under their own names.

>>> registry = metrics_registry(repository, rejections)  # doctest: +SKIP
>>> print(render(registry).decode())  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from .repository import ModelRepository
from .stats import LATENCY_BUCKETS_S, ModelStats, Rejections, ServerStats

__all__ = [
    "CONTENT_TYPE",
    "TRITON_COUNTERS",
    "LocalStats",
    "MetricsServer",
    "ServerCollector",
    "metrics_endpoint",
    "metrics_registry",
    "render",
]

logger = logging.getLogger("maas_server")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

TRITON_COUNTERS: dict[str, str] = {
    "nv_inference_request_success": "Number of successful inference requests, all batch sizes",
    "nv_inference_request_failure": "Number of failed inference requests, all batch sizes",
    "nv_inference_count": "Number of inferences performed (does not include cached requests)",
    "nv_inference_exec_count": (
        "Number of model executions performed (does not include cached requests)"
    ),
    "nv_inference_request_duration_us": "Cumulative inference request duration in microseconds",
    "nv_inference_queue_duration_us": "Cumulative inference queuing duration in microseconds",
    "nv_inference_compute_input_duration_us": ("Cumulative compute input duration in microseconds"),
    "nv_inference_compute_infer_duration_us": (
        "Cumulative compute inference duration in microseconds"
    ),
    "nv_inference_compute_output_duration_us": (
        "Cumulative inference compute output duration in microseconds"
    ),
}
"""Triton's counter families and their help texts (``model`` and ``version`` labels)."""


class LocalStats:
    """The statistics of this process: its repository's loaded versions and its refusals."""

    def __init__(self, repository: ModelRepository, rejections: Rejections) -> None:
        self.repository = repository
        self.rejections = rejections

    def read(self) -> tuple[list[tuple[str, int, ModelStats]], dict[str, int]]:
        return self.repository.version_stats(), self.rejections.snapshot()


class ServerCollector(Collector):
    """Metric families of every loaded model version, and the server's refused requests."""

    def __init__(self, source: ServerStats) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        counters = {name: Metric(name, text, "counter") for name, text in TRITON_COUNTERS.items()}
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model.",
            labels=["model", "version"],
        )
        latency = HistogramMetricFamily(
            "maas_inference_request_duration_seconds",
            "Latency of successful inference requests in the server (queue and compute)",
            labels=["model", "version"],
        )
        rejected = CounterMetricFamily(
            "maas_inference_rejected",
            "Inference requests a model refused or failed, by reason",
            labels=["model", "version", "reason"],
        )
        models, refusals = self.source.read()
        for name, number, stats in sorted(models, key=lambda entry: entry[:2]):
            version = str(number)
            labels = {"model": name, "version": version}
            triton = stats.as_triton(name, version)
            inference = triton["inference_stats"]
            values = {
                "nv_inference_request_success": inference["success"]["count"],
                "nv_inference_request_failure": inference["fail"]["count"],
                "nv_inference_count": triton["inference_count"],
                "nv_inference_exec_count": triton["execution_count"],
                "nv_inference_request_duration_us": inference["success"]["ns"] // 1000,
                "nv_inference_queue_duration_us": inference["queue"]["ns"] // 1000,
                "nv_inference_compute_input_duration_us": inference["compute_input"]["ns"] // 1000,
                "nv_inference_compute_infer_duration_us": inference["compute_infer"]["ns"] // 1000,
                "nv_inference_compute_output_duration_us": (
                    inference["compute_output"]["ns"] // 1000
                ),
            }
            for family, value in values.items():
                counters[family].add_sample(family, labels, value)
            pending.add_metric([name, version], stats.pending)
            counts, total_ns = stats.latency_counts()
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip((*LATENCY_BUCKETS_S, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append((_bound(bound), cumulative))
            latency.add_metric([name, version], buckets, total_ns / 1e9)
            for reason, count in sorted(stats.rejected_counts().items()):
                rejected.add_metric([name, version, reason], count)
        yield from counters.values()
        yield pending
        yield latency
        yield rejected
        server_rejected = CounterMetricFamily(
            "maas_rejected_requests",
            "Requests the server refused before they reached a model, by reason",
            labels=["reason"],
        )
        for reason, count in sorted(refusals.items()):
            server_rejected.add_metric([reason], count)
        yield server_rejected


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def metrics_registry(
    repository: ModelRepository, rejections: Rejections, source: ServerStats | None = None
) -> CollectorRegistry:
    """A registry of its own (not prometheus_client's global one) for one app, reading
    ``source`` (default: this process's statistics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(source or LocalStats(repository, rejections)))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus' text format, Triton's counters under Triton's names."""
    text = generate_latest(registry).decode("utf-8")
    for name in TRITON_COUNTERS:
        text = text.replace(f" {name}_total ", f" {name} ")
    return text.encode("utf-8")


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus metrics of the server (Triton's names; text format 0.0.4)."""
    registry: CollectorRegistry = request.app.state.metrics_registry
    # off the event loop: with several workers, reading waits for the others' statistics
    return Response(await asyncio.to_thread(render, registry), media_type=CONTENT_TYPE)


class _BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_threads`` at once: a connection beyond them is
    closed at once instead of starting another thread."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_threads: int
    ) -> None:
        super().__init__(address, handler)
        self.max_threads = max_threads
        self._slots = threading.BoundedSemaphore(max_threads)
        self._lock = threading.Lock()
        self.busy = 0  # connections being served now

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        with self._lock:
            self.busy += 1
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self.busy -= 1
            self._slots.release()


class MetricsServer:
    """``/metrics`` on a port of its own, served from a thread (so scrapes are answered even
    while the event loop is busy). ``port=0`` picks a free port; ``port`` says which.

    It has no API key and no TLS: bind it to loopback (the default of ``maas serve``) or to a
    network only the scraper reaches. At most ``max_threads`` connections are served at once
    (more are closed at once), and a connection silent for ``timeout_s`` is closed."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        *,
        max_threads: int = 4,
        timeout_s: float = 10.0,
    ) -> None:
        class Handler(BaseHTTPRequestHandler):
            timeout = timeout_s

            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics is served on this port")
                    return
                body = render(registry)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._httpd = _BoundedHTTPServer((host, port), Handler, max_threads)
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="maas-metrics", daemon=True
        )

    @property
    def busy(self) -> int:
        """Connections being served now."""
        return self._httpd.busy

    def start(self) -> None:
        self._thread.start()
        logger.info("metrics on http://%s:%d/metrics", self._httpd.server_address[0], self.port)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
