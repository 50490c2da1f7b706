"""A batch job next to ``client.infer_batched``, and what a running job does to online latency.

It writes a temporary repository with the MLP of ``tests/models.py`` (FP32 [-1,64] -> 128 ->
[-1,10]; ``max_batch_size`` 1024, dynamic batching with two priority levels: online requests at
level 1, batch jobs at level 2 by default), starts ``maas serve`` on a free loopback port in a
subprocess with its own data folder, uploads ``--rows`` random rows as an NPY dataset, and
measures from this process:

1. ``infer_batched``: every row sent by the client (its defaults: chunks of 1024 rows,
   concurrency 4), rows/s from the call to its return;
2. ``batch job``: the same rows as a job on the server (its defaults), rows/s from the create to
   the job's end (the result dataset written), and the rate of its chunks alone (read, infer,
   part file written and committed: the job's own ``progress.rate``);
3. online latency: one client sending single-row ``infer`` calls back to back, alone for
   ``--online-seconds``, then while a batch job runs (until the job ends or the same time
   passes); p50 and p99 of each.

Targets (issue 13; PASS/FAIL printed, ``--check`` makes a miss exit 1): the job's rows/s at
least 0.8 of ``infer_batched``'s, and the online p99 while the job runs at most 2x its p99
alone. The server runs on the same machine as the client.

Usage::

    python benchmarks/batch_jobs.py --rows 20000 --online-seconds 1   # a smoke run
    python benchmarks/batch_jobs.py                                   # 1,000,000 rows
    python benchmarks/batch_jobs.py --json out.json --check
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.servers import free_port, maas_command, serve  # noqa: E402
from maas_client import Client  # noqa: E402

__all__ = ["main", "write_repository"]

MAX_BATCH_SIZE = 1024


def write_repository(root: Path) -> Path:
    from tests import models

    models.save(models.mlp_model(), root / "mlp" / "1" / "model.onnx")
    config = {
        "max_batch_size": MAX_BATCH_SIZE,
        "dynamic_batching": {"priority_levels": 2, "default_priority_level": 1},
    }
    (root / "mlp" / "config.json").write_text(json.dumps(config))
    return root


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def online_latencies(
    client: Client, seconds: float, stop: threading.Event | None = None
) -> list[float]:
    """Milliseconds of single-row calls back to back, for ``seconds`` (or until ``stop``; at
    least 20 calls)."""
    x = np.ones((1, 64), dtype=np.float32)
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    while len(latencies) < 20 or (
        time.perf_counter() < end and not (stop is not None and stop.is_set())
    ):
        start = time.perf_counter()
        client.infer("mlp", x)
        latencies.append((time.perf_counter() - start) * 1000)
    return latencies


def measure(url: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    x = np.random.default_rng(0).standard_normal((args.rows, 64)).astype(np.float32)
    np.save(folder / "rows.npy", x)
    results: dict[str, Any] = {"rows": args.rows}
    with Client(url, timeout=600.0) as client, Client(url, timeout=60.0) as online:
        client.datasets.upload("rows", folder / "rows.npy", progress=False)
        client.infer_batched("mlp", x[:4096], progress=False)  # warm up
        online_latencies(online, 0.2)

        start = time.perf_counter()
        batched = client.infer_batched("mlp", x, progress=False)
        results["infer_batched_s"] = time.perf_counter() - start
        assert batched["output"].shape == (args.rows, 10)

        start = time.perf_counter()
        job = client.jobs.create_batch("mlp", "rows", **args.job)
        job.wait(progress=False)
        results["job_s"] = time.perf_counter() - start
        if job.state != "succeeded":
            raise RuntimeError(f"the batch job {job.state}: {job.info.error}")
        results["job_spec"] = {
            k: job.info.spec[k] for k in ("batch_size", "chunk_rows", "concurrency")
        }
        results["job_chunk_rate"] = job.progress.rate  # rows/s of its chunks, result excluded

        alone = online_latencies(online, args.online_seconds)
        during: list[float] = []
        job = client.jobs.create_batch("mlp", "rows", **args.job)
        while job.refresh().state == "queued":
            time.sleep(0.01)
        finished = threading.Event()

        def follow() -> None:
            job.wait(progress=False)
            finished.set()

        follower = threading.Thread(target=follow)
        follower.start()
        during = online_latencies(online, args.online_seconds, finished)
        job_done_during = finished.is_set()
        follower.join()
    results["job_ended_during_online"] = job_done_during
    results["online_alone"] = {
        "calls": len(alone),
        "p50_ms": statistics.median(alone),
        "p99_ms": _percentile(alone, 0.99),
    }
    results["online_during_job"] = {
        "calls": len(during),
        "p50_ms": statistics.median(during) if during else float("nan"),
        "p99_ms": _percentile(during, 0.99),
    }
    return results


def report(data: dict[str, Any]) -> bool:
    rows = data["rows"]
    batched = rows / data["infer_batched_s"]
    job = rows / data["job_s"]
    alone, during = data["online_alone"], data["online_during_job"]
    to_batched = job / batched
    p99_ratio = during["p99_ms"] / alone["p99_ms"]
    spec = data["job_spec"]
    print(f"\n{rows:,} rows of the MLP (64 -> 128 -> 10), maas serve on loopback")
    print(f"{'way':<58}{'rows/s':>12}{'seconds':>10}")
    print(
        f"{'client.infer_batched (defaults)':<58}{batched:>12,.0f}{data['infer_batched_s']:>10.2f}"
    )
    name = f"batch job (batch_size {spec['batch_size']}, chunk_rows {spec['chunk_rows']})"
    if spec.get("concurrency"):
        name = name[:-1] + f", concurrency {spec['concurrency']})"
    print(f"{name:<58}{job:>12,.0f}{data['job_s']:>10.2f}")
    if data.get("job_chunk_rate"):
        chunk_rate = data["job_chunk_rate"]
        label = "  of which its chunks (read, infer, commit), rows/s"
        print(f"{label:<58}{chunk_rate:>12,.0f}{rows / chunk_rate:>10.2f}")
    print(f"\n{'online single-row infer':<40}{'calls':>8}{'p50 ms':>10}{'p99 ms':>10}")
    for label, entry in (("alone", alone), ("while a batch job runs", during)):
        print(f"{label:<40}{entry['calls']:>8}{entry['p50_ms']:>10.2f}{entry['p99_ms']:>10.2f}")
    first = to_batched >= 0.8
    second = p99_ratio <= 2.0
    print(
        f"\nbatch job / infer_batched rows/s: {to_batched:.3f} "
        f"[{'PASS' if first else 'FAIL'}: target >= 0.80]"
    )
    print(
        f"online p99 during the job / alone: {p99_ratio:.2f} "
        f"[{'PASS' if second else 'FAIL'}: target <= 2.0]"
    )
    if data["job_ended_during_online"]:
        print("(the job ended before the online run did: the latter part ran without it)")
    data["ratios"] = {"job_to_infer_batched": to_batched, "p99_during_to_alone": p99_ratio}
    return first and second


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--online-seconds", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, help="the job's batch_size")
    parser.add_argument("--job-concurrency", type=int, help="the job's concurrency")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    args.job = {"batch_size": args.batch_size, "concurrency": args.job_concurrency}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        repository = write_repository(folder / "repository")
        port = free_port()
        command = [*maas_command(repository, port), "--data-dir", str(folder / "data")]
        with serve("maas", command, port, folder / "server.log") as server:
            data = measure(server.base_url, args, folder)
    passed = report(data)
    if args.json is not None:
        args.json.write_text(json.dumps(data, indent=2))
    return 0 if passed or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
