"""Per-model statistics in the shape of Triton's statistics extension.

The scheduler records each request (success or failure, with its queue and compute durations) and
each batch it runs; the statistics endpoint and the Prometheus metrics read them.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "LATENCY_BUCKETS_S",
    "Duration",
    "ModelStats",
    "Rejections",
    "ServerStats",
    "StatsSource",
    "model_statistics",
]

LATENCY_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
)  # fmt: skip
"""Upper bounds of the request latency histogram (seconds); a last bucket takes the rest."""
_LATENCY_BOUNDS_NS = tuple(int(b * 1e9) for b in LATENCY_BUCKETS_S)
_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass
class Duration:
    """A count and the total nanoseconds of the things counted."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class _BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


class ModelStats:
    """Counters of one model version. Updated from the event loop and read from anywhere.

    ``pending`` also tells when the version has nothing left to do: :meth:`wait_idle` blocks
    until it drops to 0 (what closing a replaced or unloaded version waits for).
    """

    def __init__(self) -> None:
        self._lock = threading.Condition(threading.Lock())
        self._idle_watched = False
        self.last_inference_ms = 0
        self.inference_count = 0
        self.execution_count = 0
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self.batches: dict[int, _BatchStats] = {}
        self.rejected: dict[str, int] = {}
        self.pending = 0  # requests queued or running; generation: sequences waiting or running
        self.latency = [0] * (len(_LATENCY_BOUNDS_NS) + 1)

    def record_success(
        self, rows: int, total_ns: int, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        with self._lock:
            self.last_inference_ms = int(time.time() * 1000)
            self.inference_count += max(rows, 1)
            self.success.add(total_ns)
            self.queue.add(queue_ns)
            self.compute_input.add(input_ns)
            self.compute_infer.add(infer_ns)
            self.compute_output.add(output_ns)
            self.latency[bisect_left(_LATENCY_BOUNDS_NS, total_ns)] += 1

    def record_batch_success(
        self, requests: list[tuple[int, int, int]], input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        """One batch that ran, and each of its requests as ``(rows, total_ns, queue_ns)``: the
        same as :meth:`record_batch` and a :meth:`record_success` per request, under one lock."""
        with self._lock:
            self.last_inference_ms = int(time.time() * 1000)
            self.execution_count += 1
            rows_total = 0
            for rows, total_ns, queue_ns in requests:
                rows_total += rows
                self.inference_count += max(rows, 1)
                self.success.add(total_ns)
                self.queue.add(queue_ns)
                self.compute_input.add(input_ns)
                self.compute_infer.add(infer_ns)
                self.compute_output.add(output_ns)
                self.latency[bisect_left(_LATENCY_BOUNDS_NS, total_ns)] += 1
            batch = self.batches.get(rows_total)
            if batch is None:
                batch = self.batches[rows_total] = _BatchStats()
            batch.compute_input.add(input_ns)
            batch.compute_infer.add(infer_ns)
            batch.compute_output.add(output_ns)

    def add_pending(self, delta: int) -> None:
        """Requests that start (``delta`` > 0) or end waiting or running, from any thread."""
        with self._lock:
            self.pending += delta
            if self._idle_watched and self.pending <= 0:
                self._lock.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is pending (any thread but the event loop); False on timeout."""
        with self._lock:
            self._idle_watched = True
            return self._lock.wait_for(lambda: self.pending <= 0, timeout)

    def record_requests(
        self, successes: list[tuple[int, int, int]], failures: list[tuple[int, str]]
    ) -> None:
        """Requests that ended, under one lock, and no longer pending (see :meth:`add_pending`):
        each success as ``(total_ns, queue_ns, infer_ns)`` (one inference, no input or output
        time), each failure as ``(total_ns, reason)``. What a generation engine records when it
        lets go of sequences; their session runs are counted by :meth:`record_batch`."""
        with self._lock:
            self.pending -= len(successes) + len(failures)
            if self._idle_watched and self.pending <= 0:
                self._lock.notify_all()
            if successes:
                self.last_inference_ms = int(time.time() * 1000)
            for total_ns, queue_ns, infer_ns in successes:
                self.inference_count += 1
                self.success.add(total_ns)
                self.queue.add(queue_ns)
                self.compute_input.add(0)
                self.compute_infer.add(infer_ns)
                self.compute_output.add(0)
                self.latency[bisect_left(_LATENCY_BOUNDS_NS, total_ns)] += 1
            for total_ns, reason in failures:
                self.fail.add(total_ns)
                self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def record_failure(self, total_ns: int, reason: str | None = None) -> None:
        with self._lock:
            self.fail.add(total_ns)
            if reason is not None:
                self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def record_batch(self, size: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        with self._lock:
            self.execution_count += 1
            batch = self.batches.setdefault(size, _BatchStats())
            batch.compute_input.add(input_ns)
            batch.compute_infer.add(infer_ns)
            batch.compute_output.add(output_ns)

    def latency_counts(self) -> tuple[list[int], int]:
        """Successful requests per latency bucket (not cumulative) and their total nanoseconds."""
        with self._lock:
            return list(self.latency), self.success.ns

    def rejected_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.rejected)

    def snapshot(self) -> dict[str, Any]:
        """Every counter, as JSON-ready data another process can :meth:`absorb`."""
        with self._lock:
            return {
                "triton": self._triton("", ""),
                "pending": self.pending,
                "latency": list(self.latency),
                "rejected": dict(self.rejected),
            }

    def absorb(self, snapshot: dict[str, Any], *, alive: bool = True) -> None:
        """Add the counters of another process's :meth:`snapshot` to these (its ``pending``
        gauge only while that process is ``alive``)."""
        triton = snapshot["triton"]
        inference = triton["inference_stats"]
        with self._lock:
            self.last_inference_ms = max(self.last_inference_ms, int(triton["last_inference"]))
            self.inference_count += int(triton["inference_count"])
            self.execution_count += int(triton["execution_count"])
            for key in _DURATIONS:
                _absorb(getattr(self, key), inference[key])
            for entry in triton["batch_stats"]:
                batch = self.batches.setdefault(int(entry["batch_size"]), _BatchStats())
                _absorb(batch.compute_input, entry["compute_input"])
                _absorb(batch.compute_infer, entry["compute_infer"])
                _absorb(batch.compute_output, entry["compute_output"])
            for reason, count in snapshot["rejected"].items():
                self.rejected[reason] = self.rejected.get(reason, 0) + int(count)
            if alive:
                self.pending += int(snapshot["pending"])
            for i, count in enumerate(snapshot["latency"][: len(self.latency)]):
                self.latency[i] += int(count)

    def as_triton(self, name: str, version: str) -> dict[str, Any]:
        """This model's entry of ``GET /v2/models/stats``."""
        with self._lock:
            return self._triton(name, version)

    def _triton(self, name: str, version: str) -> dict[str, Any]:
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": self.compute_input.as_dict(),
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": self.compute_output.as_dict(),
                "cache_hit": {"count": 0, "ns": 0},
                "cache_miss": {"count": 0, "ns": 0},
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": b.compute_input.as_dict(),
                    "compute_infer": b.compute_infer.as_dict(),
                    "compute_output": b.compute_output.as_dict(),
                }
                for size, b in sorted(self.batches.items())
            ],
        }


def _absorb(duration: Duration, data: dict[str, Any]) -> None:
    duration.count += int(data["count"])
    duration.ns += int(data["ns"])


class Rejections:
    """Requests refused before they reach a model, counted by reason (``unauthenticated``,
    ``forbidden``, ``rate_limited``, ``concurrency_limit``, ``payload_too_large``,
    ``headers_too_large``, ``deadline_exceeded``). Counted on the event loop, read by scrapes."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def add(self, reason: str) -> None:
        self._counts[reason] = self._counts.get(reason, 0) + 1

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)  # one C-level copy: safe against the loop's updates


class StatsSource(Protocol):
    """What :func:`model_statistics` reads: the statistics of loaded model versions."""

    def version_stats(
        self, name: str | None, version: str | None
    ) -> list[tuple[str, int, ModelStats]]:
        """``(name, version, stats)`` of every loaded version, of ``name``'s, or of one."""
        ...


class ServerStats(Protocol):
    """What the Prometheus collector reads: the statistics of every loaded version and the
    server's refused requests (of this process, or summed over the workers)."""

    def read(self) -> tuple[list[tuple[str, int, ModelStats]], dict[str, int]]:
        """``(name, version, stats)`` of every loaded version, and the refusals by reason."""
        ...


def model_statistics(
    source: StatsSource, name: str | None = None, version: str | None = None
) -> list[dict[str, Any]]:
    """The ``model_stats`` list of Triton's statistics extension: every loaded version of every
    model, every loaded version of ``name``, or one version (404 for an unknown model)."""
    found = sorted(source.version_stats(name, version), key=lambda entry: entry[:2])
    return [stats.as_triton(n, str(v)) for n, v, stats in found]
