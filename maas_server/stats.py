"""Per-model statistics in the shape of Triton's statistics extension.

The scheduler records each request (success or failure, with its queue and compute durations) and
each batch it runs; the statistics endpoint and the Prometheus metrics read them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Duration", "ModelStats"]


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
    """Counters of one model version. Updated from the event loop and read from anywhere."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
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
        self.pending = 0

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

    def as_triton(self, name: str, version: str) -> dict[str, Any]:
        """This model's entry of ``GET /v2/models/stats``."""
        with self._lock:
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
