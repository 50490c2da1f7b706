"""What API keys, metrics and the access log cost: the same server with them on and off.

Two ``maas serve`` subprocesses over the same repository (the MLP of ``server_throughput.py``):

- ``plain``: no keys, ``--access-log off``, nobody scrapes ``/metrics``;
- ``secured``: a keys file (the key has scopes, a model allow-list, a rate limit and a concurrency
  quota high enough never to refuse, so that the token bucket and the quota run on every
  request), ``--access-log json`` (written to the server's log file), and ``/metrics`` scraped
  once a second by this process during the run.

They are measured one at a time, alternating (plain, secured, plain, secured, ...) so that drifts
of the machine hit both alike; each round is ``--duration`` seconds of batch-1 binary MLP requests
at ``--concurrency`` (64) with the raw-socket load generator (``benchmarks/loadgen.py``). The
result is the median requests/s of each and the cost ``1 - secured/plain``.

Target (issue: security and observability): the cost of auth + metrics + access log <= 10% at
concurrency 64.

Usage::

    python benchmarks/security_overhead.py                 # 3 rounds of 5 s each
    python benchmarks/security_overhead.py --rounds 5 --duration 10 --json out.json
    python benchmarks/security_overhead.py --quick         # smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.loadgen import (  # noqa: E402
    LoadResult,
    RequestSpec,
    format_result,
    infer_body,
    run_load_blocking,
    shared_cores_note,
)
from benchmarks.server_throughput import build_repository  # noqa: E402
from benchmarks.servers import cpu_seconds, free_port, maas_command, serve  # noqa: E402
from maas_server.keys_file import add_key  # noqa: E402

__all__ = ["main"]

TARGET_COST = 0.10


@contextmanager
def scraping(url: str, headers: dict[str, str], interval: float = 1.0) -> Iterator[list[int]]:
    """Scrape ``url`` every ``interval`` seconds in a thread; yields the list of statuses."""
    statuses: list[int] = []
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(trust_env=False, timeout=10, headers=headers) as client:
            while not stop.wait(interval):
                statuses.append(client.get(url).status_code)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join(timeout=15)


def measure(
    name: str,
    command: list[str],
    port: int,
    log: Path,
    spec: RequestSpec,
    scrape_headers: dict[str, str] | None,
    args: argparse.Namespace,
) -> tuple[LoadResult, float | None, list[int]]:
    """One round: start the server, load it (scraping its metrics when ``scrape_headers`` is
    given), stop it. Also the server's CPU us per request and the scrapes' statuses."""
    with serve(name, command, port, log) as server:
        url = f"{server.base_url}/v2/models/mlp/infer"
        # A short warm-up run, so that both servers are measured in the same state.
        run_load_blocking(url, spec, args.concurrency, 1_000_000, 0.5, engine=args.engine)
        cpu_before = cpu_seconds(server.process.pid)
        statuses: list[int] = []
        if scrape_headers is not None:
            with scraping(f"{server.base_url}/metrics", scrape_headers) as statuses:
                result = run_load_blocking(
                    url, spec, args.concurrency, 10_000_000, args.duration, engine=args.engine
                )
        else:
            result = run_load_blocking(
                url, spec, args.concurrency, 10_000_000, args.duration, engine=args.engine
            )
        cpu_after = cpu_seconds(server.process.pid)
    cpu_us = None
    if cpu_before is not None and cpu_after is not None and result.requests:
        cpu_us = (cpu_after - cpu_before) / result.requests * 1e6
    return result, cpu_us, statuses


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    repository = build_repository(workdir / "repository")
    keys = workdir / "keys.json"
    key, _ = add_key(
        keys, "bench", ["infer"], models=["mlp"], rate=1e6, burst=1_000_000, concurrency=4096
    )
    scraper, _ = add_key(keys, "prometheus", ["read"])
    spec = infer_body({"input": np.ones((1, 64), dtype=np.float32)}, binary=True)
    secured_spec = RequestSpec(spec.body, {**spec.headers, "Authorization": f"Bearer {key}"})
    variants = ["plain", "secured", *(["keys-only", "log-only"] if args.breakdown else [])]
    results: dict[str, list[tuple[LoadResult, float | None]]] = {name: [] for name in variants}
    print(shared_cores_note("each server in turn"))
    for round_index in range(args.rounds):
        for name in variants:
            port = free_port()
            command = maas_command(repository, port)
            scrape_headers = None
            request = spec
            if name in ("secured", "keys-only"):
                command += ["--api-keys-file", str(keys)]
                request = secured_spec
            command += ["--access-log", "json" if name in ("secured", "log-only") else "off"]
            if name == "secured":
                scrape_headers = {"Authorization": f"Bearer {scraper}"}
            log = workdir / f"{name}-{round_index}.log"
            result, cpu_us, scrapes = measure(
                name, command, port, log, request, scrape_headers, args
            )
            results[name].append((result, cpu_us))
            cpu = f"  server cpu {cpu_us:6.1f} us/req" if cpu_us is not None else ""
            print(f"round {round_index + 1} {name:8s} {format_result(result)}{cpu}")
            if name == "secured":
                lines = log.read_text(errors="replace").count('"request_id"')
                print(f"    access log lines written: {lines}; metrics scrapes: {scrapes}")
    summary: dict[str, Any] = {}
    for name, rows in results.items():
        rates = [r.requests_per_s for r, _ in rows]
        cpus = [c for _, c in rows if c is not None]
        summary[name] = {
            "requests_per_s": rates,
            "median_requests_per_s": statistics.median(rates),
            "errors": sum(r.errors for r, _ in rows),
            "median_p99_ms": statistics.median(r.p99_ms for r, _ in rows),
            "median_server_cpu_us": statistics.median(cpus) if cpus else None,
        }
    plain = summary["plain"]["median_requests_per_s"]
    secured = summary["secured"]["median_requests_per_s"]
    cost = 1 - secured / plain if plain else float("nan")
    summary["cost"] = cost
    summary["target_cost"] = TARGET_COST
    summary["pass"] = cost <= TARGET_COST and not summary["secured"]["errors"]
    summary["concurrency"] = args.concurrency
    summary["duration_s"] = args.duration
    summary["engine"] = args.engine
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--engine", choices=["raw", "httpx"], default="raw")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s (smoke run)")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also measure keys alone and the access log alone",
    )
    parser.add_argument("--json", type=Path, help="write the summary here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 1.0
    with tempfile.TemporaryDirectory(prefix="maas-security-bench-") as tmp:
        summary = run(args, Path(tmp))
    plain, secured = summary["plain"], summary["secured"]
    print()
    print(
        f"plain   (no keys, no access log, no scrapes): "
        f"{plain['median_requests_per_s']:9.1f} req/s (median), p99 {plain['median_p99_ms']:.2f} ms"
    )
    print(
        f"secured (keys + metrics scraped + JSON log):  "
        f"{secured['median_requests_per_s']:9.1f} req/s (median), "
        f"p99 {secured['median_p99_ms']:.2f} ms"
    )
    if plain["median_server_cpu_us"] and secured["median_server_cpu_us"]:
        print(
            f"server CPU per request: {plain['median_server_cpu_us']:.1f} us plain, "
            f"{secured['median_server_cpu_us']:.1f} us secured"
        )
    for name in ("keys-only", "log-only"):
        if name in summary:
            row = summary[name]
            print(
                f"{name:9s} {row['median_requests_per_s']:9.1f} req/s (median), server CPU "
                f"{row['median_server_cpu_us'] or float('nan'):.1f} us/req"
            )
    verdict = "PASS" if summary["pass"] else "FAIL"
    print(
        f"ratio secured/plain {1 - summary['cost']:.3f}; cost {100 * summary['cost']:.1f}% "
        f"(target <= {100 * TARGET_COST:.0f}% at concurrency {args.concurrency}): {verdict}"
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if summary["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
