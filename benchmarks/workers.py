"""``maas serve --workers N``: requests/s of the MLP at batch 1 over binary with 1, 2, ... N
workers on the same machine.

For each worker count, one ``maas serve --workers N`` runs (under ``taskset -c SERVER_CPUS``
where given), the load generator (``benchmarks/loadgen.py``, raw HTTP/1.1, ``--concurrency``
connections split over one process per client CPU) runs pinned to ``--client-cpus``, and the
table gives requests/s, latency percentiles and errors. The target (issue 15): N workers serve at
least ``0.8 x N`` times what one worker serves, up to the cores the server has (``min(N, server
cores)``); the last column is the ratio to that target (1.00 or more: met).

By default, with 4 CPUs or more, the server gets the first three quarters of the CPUs this
process may use and the load generator the rest; with 2 or 3 CPUs, the last one goes to the load
generator; with 1 CPU both share it (the figures then say little).

Usage::

    python benchmarks/workers.py                        # 1, 2 and N workers, 5 s each
    python benchmarks/workers.py --workers-list 1,2,4,8 --duration 10 \\
        --server-cpus 0-7 --client-cpus 8-15
    python benchmarks/workers.py --quick                # smoke run, a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.loadgen import (  # noqa: E402
    LoadResult,
    infer_body,
    run_load_blocking,
    run_load_processes,
)
from benchmarks.servers import free_port, maas_command, serve  # noqa: E402

__all__ = ["Row", "main", "parse_cpus"]

TARGET = 0.8
"""N workers should serve at least this times N times one worker (up to the server's cores)."""


@dataclass
class Row:
    """One line of the table."""

    workers: int
    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    client_cpu_pct: float
    ratio: float | None = None
    """requests/s over ``0.8 x min(workers, server cores) x`` one worker's."""


def parse_cpus(text: str) -> list[int]:
    """``0-3,8,10-11`` as a list of CPU numbers (``taskset -c`` syntax)."""
    cpus: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                first, last = (int(x) for x in part.split("-", 1))
                cpus.extend(range(first, last + 1))
            else:
                cpus.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CPUs such as 0-3,8, not {text!r}") from None
    if not cpus or min(cpus) < 0:
        raise argparse.ArgumentTypeError(f"no CPU in {text!r}")
    return sorted(set(cpus))


def parse_workers(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 1,2,4, not {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("worker counts are positive integers")
    return counts


def default_split(cpus: Sequence[int]) -> tuple[list[int], list[int]]:
    """The server's CPUs and the load generator's (see the module)."""
    cpus = sorted(cpus)
    if len(cpus) < 2:
        return list(cpus), list(cpus)
    client = max(1, len(cpus) // 4)
    return cpus[:-client], cpus[-client:]


def _cpu_text(cpus: Sequence[int]) -> str:
    return ",".join(str(c) for c in cpus)


def _wait_for_workers(url: str, count: int, timeout: float = 120.0) -> None:
    """Until ``count`` workers serve (``GET /v2``'s ``maas_worker``)."""
    if count == 1:
        return
    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False, timeout=10) as client:
        while True:
            meta = client.get(f"{url}/v2").json().get("maas_worker", {})
            if len(meta.get("serving", [])) >= count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{count} workers not serving after {timeout:g} s: {meta}")
            time.sleep(0.1)


def build_repository(root: Path) -> Path:
    """The MLP of ``benchmarks/server_throughput.py`` (FP32 [-1,64] -> [-1,10])."""
    from tests import models

    models.save(models.mlp_model(64, 128, 10), root / "mlp" / "1" / "model.onnx")
    (root / "mlp" / "config.json").write_text(json.dumps({"max_batch_size": 64, "warmup": 2}))
    return root


def measure(
    repo: Path,
    workdir: Path,
    workers: int,
    args: argparse.Namespace,
) -> LoadResult:
    port = free_port()
    command = [*maas_command(repo, port), "--access-log", "off", "--workers", str(workers)]
    if args.pin:
        command = ["taskset", "-c", _cpu_text(args.server_cpus), *command]
    spec = infer_body({"input": np.ones((1, 64), dtype=np.float32)}, binary=True)
    log = workdir / f"serve-{workers}.log"
    with serve(f"maas serve --workers {workers}", command, port, log) as server:
        _wait_for_workers(server.base_url, workers)
        url = f"{server.base_url}/v2/models/mlp/infer"
        before = os.sched_getaffinity(0) if args.pin else None
        if args.pin:
            os.sched_setaffinity(0, set(args.client_cpus))
        try:
            if args.client_processes > 1:
                return run_load_processes(
                    url,
                    spec,
                    args.concurrency,
                    args.count,
                    args.duration,
                    args.client_processes,
                    engine="raw",
                )
            return run_load_blocking(
                url, spec, args.concurrency, args.count, args.duration, engine="raw"
            )
        finally:
            if before is not None:
                os.sched_setaffinity(0, before)


def report(rows: Sequence[Row], args: argparse.Namespace) -> list[str]:
    lines = [
        f"MLP batch 1, binary, c={args.concurrency}, {args.duration:g} s per row; server CPUs "
        f"{_cpu_text(args.server_cpus)}, load generator CPUs {_cpu_text(args.client_cpus)} "
        f"({args.client_processes} process(es)){'' if args.pin else ', not pinned'}",
        "target: N workers >= 0.8 x min(N, server cores) x one worker; ratio = req/s / target",
        "",
        f"{'workers':>7}  {'req/s':>9}  {'p50 ms':>8}  {'p99 ms':>8}  {'errors':>6}  "
        f"{'client cpu':>10}  {'ratio':>6}",
    ]
    for row in rows:
        ratio = f"{row.ratio:6.2f}" if row.ratio is not None else "     -"
        lines.append(
            f"{row.workers:>7}  {row.requests_per_s:9.1f}  {row.p50_ms:8.3f}  {row.p99_ms:8.3f}  "
            f"{row.errors:>6}  {row.client_cpu_pct:9.0f}%  {ratio}"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="req/s of maas serve --workers N (MLP batch 1, binary) against one worker."
    )
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    parser.add_argument(
        "--workers-list",
        type=parse_workers,
        help="worker counts to measure (default: 1, 2 and the server's CPUs)",
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per worker count")
    parser.add_argument("--count", type=int, default=10_000_000, help="max requests per row")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--server-cpus", type=parse_cpus, help="e.g. 0-7 (taskset -c)")
    parser.add_argument("--client-cpus", type=parse_cpus, help="e.g. 8-15")
    parser.add_argument(
        "--client-processes",
        type=int,
        help="load generator processes (default: one per client CPU)",
    )
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--json", dest="json_out", type=Path, help="save the results here")
    args = parser.parse_args(argv)
    server_cpus, client_cpus = default_split(available)
    args.server_cpus = args.server_cpus or server_cpus
    args.client_cpus = args.client_cpus or client_cpus
    if args.pin and (shutil.which("taskset") is None or not hasattr(os, "sched_setaffinity")):
        print("taskset or sched_setaffinity missing: not pinning", file=sys.stderr)
        args.pin = False
    if args.client_processes is None:
        args.client_processes = len(args.client_cpus) if args.pin else 1
    cores = len(args.server_cpus)
    if args.workers_list is None:
        args.workers_list = sorted({1, 2, cores})
    if args.quick:
        args.duration = min(args.duration, 0.5)
        args.count = min(args.count, 500)
        args.concurrency = min(args.concurrency, 8)

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="maas-bench-workers-") as tmp:
        workdir = Path(tmp)
        repo = build_repository(workdir / "repository")
        for workers in args.workers_list:
            result = measure(repo, workdir, workers, args)
            rows.append(
                Row(
                    workers,
                    result.requests,
                    result.requests_per_s,
                    result.p50_ms,
                    result.p99_ms,
                    result.errors,
                    100 * result.client_cpu_share,
                )
            )
            print(f"{workers} worker(s): {result.requests_per_s:.1f} req/s", file=sys.stderr)
    one = next((r for r in rows if r.workers == 1), None)
    if one is not None and one.requests_per_s > 0:
        for row in rows:
            row.ratio = row.requests_per_s / (TARGET * min(row.workers, cores) * one.requests_per_s)
    for line in report(rows, args):
        print(line)
    if args.json_out is not None:
        meta: dict[str, Any] = {
            "server_cpus": args.server_cpus,
            "client_cpus": args.client_cpus,
            "pinned": args.pin,
            "concurrency": args.concurrency,
            "duration": args.duration,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        args.json_out.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}))
    errors = sum(r.errors for r in rows)
    if errors:
        print(f"\n{errors} request(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
