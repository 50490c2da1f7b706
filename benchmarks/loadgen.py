"""An async HTTP load generator for loopback servers: closed-loop workers over one httpx client.

``run_load`` keeps ``concurrency`` requests in flight (each worker sends its next request when the
previous answer is in), stops after ``max_requests`` requests or ``max_duration`` seconds,
whichever comes first, and reports requests/s, latency percentiles and errors. Every request's
body is built before the clock starts (by the request factory), so what is measured is HTTP and the
server, not the encoding of the request.

Only loopback targets are accepted (``127.0.0.0/8``, ``::1``, ``localhost``): this is a tool for
measuring a server on the same machine, not for loading someone else's.

Example::

    spec = RequestSpec(body, {"Content-Type": "application/octet-stream"})
    result = run_load_blocking("http://127.0.0.1:8000/v2/models/mlp/infer", spec, 8, 10_000, 5)
    print(result.requests_per_s, result.p99_ms)

Command line (a batch-1 binary request to the MLP of ``maas serve``)::

    python benchmarks/loadgen.py http://127.0.0.1:8000/v2/models/mlp/infer \\
        --input input:FP32:1,64 --binary -c 1,8,64 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import ipaddress
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np

__all__ = [
    "Engine",
    "LoadResult",
    "NonLoopbackError",
    "RequestFactory",
    "RequestSpec",
    "Validator",
    "check_loopback",
    "format_result",
    "infer_body",
    "infer_request",
    "merge_results",
    "run_load",
    "run_load_blocking",
    "run_load_processes",
    "shared_cores_note",
]

_ERROR_SAMPLES = 5


class NonLoopbackError(ValueError):
    """The target is not a loopback address; the load generator only loads local servers."""


@dataclass(frozen=True)
class RequestSpec:
    """One request to send: its body and headers (the method is always POST)."""

    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


RequestFactory = Callable[[], RequestSpec]
"""Called once per request, before the request's clock starts."""

Validator = Callable[[int, Mapping[str, str], bytes], "str | None"]
"""``validate(status, headers, body)``: a message when the answer is wrong, else None."""

Engine = Literal["httpx", "raw"]


@dataclass
class LoadResult:
    """What one load run measured. Latencies are of successful requests only."""

    url: str
    concurrency: int
    requests: int
    errors: int
    duration_s: float
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    client_cpu_s: float
    processes: int = 1
    error_samples: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def client_cpu_share(self) -> float:
        """Client CPU time per wall second (1.0 = one core busy the whole run)."""
        return self.client_cpu_s / self.duration_s if self.duration_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """The result without the per-request latencies, ready for JSON."""
        data = asdict(self)
        data.pop("latencies_ms")
        data["client_cpu_share"] = self.client_cpu_share
        return data


def check_loopback(url: str) -> httpx.URL:
    """The parsed URL, or :class:`NonLoopbackError` when its host is not a loopback address.

    Host names other than ``localhost`` are refused without being resolved.
    """
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https"):
        raise NonLoopbackError(f"{url!r}: only http:// and https:// URLs can be loaded")
    host = parsed.host
    if host.lower().rstrip(".") == "localhost":
        return parsed
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise NonLoopbackError(
            f"refusing to load {host or '(no host)'!r}: the load generator only targets "
            "loopback servers (127.0.0.0/8, ::1, localhost)"
        )
    return parsed


def _percentiles(latencies_ms: Sequence[float]) -> tuple[float, float, float, float, float]:
    if not latencies_ms:
        nan = float("nan")
        return nan, nan, nan, nan, nan
    values = np.asarray(latencies_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return float(p50), float(p90), float(p99), float(values.mean()), float(values.max())


def _make_result(
    url: str,
    concurrency: int,
    latencies_ms: list[float],
    errors: int,
    duration_s: float,
    client_cpu_s: float,
    error_samples: list[str],
    processes: int = 1,
) -> LoadResult:
    p50, p90, p99, mean, worst = _percentiles(latencies_ms)
    return LoadResult(
        url=url,
        concurrency=concurrency,
        requests=len(latencies_ms) + errors,
        errors=errors,
        duration_s=duration_s,
        requests_per_s=len(latencies_ms) / duration_s if duration_s > 0 else 0.0,
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        mean_ms=mean,
        max_ms=worst,
        client_cpu_s=client_cpu_s,
        processes=processes,
        error_samples=error_samples,
        latencies_ms=latencies_ms,
    )


class _HttpxSender:
    """Requests through httpx, one ``AsyncClient`` per worker.

    One client shared by all workers would be what a program does, but httpcore 1.0's pool scans
    every connection for every queued request (encode/httpcore#1035): measured here against the
    bare app, 64 workers on one client managed ~105 req/s at 91% client CPU, 64 clients ~1,200.
    """

    def __init__(self, url: str, timeout: float, validate: Validator | None) -> None:
        self._url = url
        self._validate = validate
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            timeout=timeout,
            headers={"Accept-Encoding": "identity"},
            trust_env=False,
        )

    async def send(self, spec: RequestSpec) -> str | None:
        try:
            response = await self._client.post(self._url, content=spec.body, headers=spec.headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if not response.is_success:
            return f"HTTP {response.status_code}: {response.text[:200]}"
        if self._validate is not None:
            return self._validate(response.status_code, response.headers, response.content)
        return None

    async def aclose(self) -> None:
        await self._client.aclose()


class _RawSender:
    """Requests written as HTTP/1.1 bytes on one keep-alive socket: a client that costs a few
    tens of microseconds per request, for when httpx's own cost would hide the server's."""

    def __init__(self, url: str, validate: Validator | None) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme != "http":
            raise ValueError("the raw engine speaks plain http:// only")
        self._host = parsed.host
        self._port = parsed.port or 80
        target = parsed.raw_path.decode("ascii")
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._start = (
            f"POST {target} HTTP/1.1\r\nHost: {host}:{self._port}\r\nAccept-Encoding: identity\r\n"
        ).encode("latin-1")
        self._validate = validate
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._last: RequestSpec | None = None
        self._head = b""

    def _request_head(self, spec: RequestSpec) -> bytes:
        if spec is not self._last:
            lines = [f"{k}: {v}\r\n" for k, v in spec.headers.items()]
            lines.append(f"Content-Length: {len(spec.body)}\r\n\r\n")
            self._head = self._start + "".join(lines).encode("latin-1")
            self._last = spec
        return self._head

    async def send(self, spec: RequestSpec) -> str | None:
        try:
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
            assert self._reader is not None
            self._writer.writelines((self._request_head(spec), spec.body))
            head = await self._reader.readuntil(b"\r\n\r\n")
            status, headers = _parse_head(head)
            if headers.get("transfer-encoding", "").lower() == "chunked":
                body = await _read_chunked(self._reader)
            else:
                body = await self._reader.readexactly(int(headers.get("content-length", "0")))
            if headers.get("connection", "").lower() == "close":
                await self.aclose()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            await self.aclose()
            return f"{type(exc).__name__}: {exc}"
        except ValueError as exc:
            await self.aclose()
            return f"malformed response: {exc}"
        if not 200 <= status < 300:
            return f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}"
        if self._validate is not None:
            return self._validate(status, headers, body)
        return None

    async def aclose(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ValueError(f"bad status line {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return b"".join(chunks)
        chunks.append((await reader.readexactly(size + 2))[:-2])


async def run_load(
    url: str,
    request: RequestSpec | RequestFactory,
    concurrency: int,
    max_requests: int,
    max_duration: float,
    *,
    engine: Engine = "httpx",
    warmup_requests: int | None = None,
    timeout: float = 30.0,
    validate: Validator | None = None,
) -> LoadResult:
    """Load ``url`` with ``concurrency`` workers until ``max_requests`` or ``max_duration`` s.

    ``request`` is a fixed :class:`RequestSpec` or a factory called once per request. A request
    is an error when it fails (connection refused, reset, ...), answers outside 2xx, when
    ``validate(status, headers, body)`` returns a message, or when it is still unanswered
    ``timeout`` seconds after the run's end. ``engine`` is ``"httpx"`` (an ``httpx.AsyncClient``
    per worker, ``Accept-Encoding: identity``) or ``"raw"`` (hand-written HTTP/1.1 on a socket per
    worker). Before the clock starts each worker sends warm-up requests (one each by default) so
    that every connection is open when measuring begins.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if max_requests < 1 or max_duration <= 0:
        raise ValueError("max_requests must be at least 1 and max_duration positive")
    check_loopback(url)
    if isinstance(request, RequestSpec):
        fixed = request

        def factory() -> RequestSpec:
            return fixed

    else:
        factory = request
    senders: list[_HttpxSender | _RawSender]
    if engine == "httpx":
        senders = [_HttpxSender(url, timeout, validate) for _ in range(concurrency)]
    elif engine == "raw":
        senders = [_RawSender(url, validate) for _ in range(concurrency)]
    else:
        raise ValueError(f"unknown engine {engine!r}; use 'httpx' or 'raw'")
    warmup = concurrency if warmup_requests is None else warmup_requests
    latencies_ms: list[float] = []
    errors = 0
    error_samples: list[str] = []
    issued = 0
    deadline = 0.0

    def failed(problem: str) -> None:
        nonlocal errors
        errors += 1
        if len(error_samples) < _ERROR_SAMPLES:
            error_samples.append(problem)

    async def warm(sender: _HttpxSender | _RawSender, count: int) -> None:
        for _ in range(count):
            await sender.send(factory())

    async def worker(sender: _HttpxSender | _RawSender) -> None:
        nonlocal issued
        while issued < max_requests and time.perf_counter() < deadline:
            issued += 1
            spec = factory()
            start = time.perf_counter()
            problem = await sender.send(spec)
            elapsed_ms = (time.perf_counter() - start) * 1e3
            if problem is None:
                latencies_ms.append(elapsed_ms)
            else:
                failed(problem)

    try:
        share, extra = divmod(warmup, concurrency)
        await asyncio.wait_for(
            asyncio.gather(*(warm(s, share + (i < extra)) for i, s in enumerate(senders))),
            timeout + warmup,
        )
        cpu_start = time.process_time()
        start = time.perf_counter()
        deadline = start + max_duration
        tasks = [asyncio.ensure_future(worker(s)) for s in senders]
        _, late = await asyncio.wait(tasks, timeout=max_duration + timeout)
        duration = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        for task in late:
            task.cancel()
            failed(f"no answer within {timeout} s of the end of the run")
        await asyncio.gather(*late, return_exceptions=True)
        for task in tasks:
            if not task.cancelled():
                task.result()  # a bug in a worker (or the factory) surfaces here
    finally:
        await asyncio.gather(*(s.aclose() for s in senders), return_exceptions=True)
    return _make_result(url, concurrency, latencies_ms, errors, duration, cpu, error_samples)


def run_load_blocking(
    url: str,
    request: RequestSpec | RequestFactory,
    concurrency: int,
    max_requests: int,
    max_duration: float,
    *,
    engine: Engine = "httpx",
    timeout: float = 30.0,
) -> LoadResult:
    """:func:`run_load` on a fresh event loop (uvloop when it is installed, as for the server)."""
    coro = run_load(
        url, request, concurrency, max_requests, max_duration, engine=engine, timeout=timeout
    )
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def merge_results(results: Sequence[LoadResult]) -> LoadResult:
    """One result for several load generators that ran side by side over the same window."""
    if not results:
        raise ValueError("nothing to merge")
    latencies = [x for r in results for x in r.latencies_ms]
    errors = sum(r.errors for r in results)
    duration = max(r.duration_s for r in results)
    samples = [s for r in results for s in r.error_samples][:_ERROR_SAMPLES]
    return _make_result(
        results[0].url,
        sum(r.concurrency for r in results),
        latencies,
        errors,
        duration,
        sum(r.client_cpu_s for r in results),
        samples,
        processes=sum(r.processes for r in results),
    )


def _child_run(
    url: str,
    request: RequestSpec,
    concurrency: int,
    max_requests: int,
    max_duration: float,
    engine: Engine,
    start_at: float,
    timeout: float,
) -> LoadResult:
    # Every process has imported and is ready: start together.
    time.sleep(max(0.0, start_at - time.time()))
    return run_load_blocking(
        url, request, concurrency, max_requests, max_duration, engine=engine, timeout=timeout
    )


def run_load_processes(
    url: str,
    request: RequestSpec,
    concurrency: int,
    max_requests: int,
    max_duration: float,
    processes: int,
    *,
    engine: Engine = "httpx",
    timeout: float = 30.0,
) -> LoadResult:
    """:func:`run_load` split over ``processes`` fresh processes, for when one client process
    cannot keep up with the server (each process gets its share of the concurrency and count).
    Only worth it when the machine has cores to spare beyond the server's."""
    check_loopback(url)
    processes = max(1, min(processes, concurrency))
    start_at = time.time() + 2.0 + 0.5 * processes
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
        futures = [
            pool.submit(
                _child_run,
                url,
                request,
                concurrency // processes + (i < concurrency % processes),
                max(1, max_requests // processes),
                max_duration,
                engine,
                start_at,
                timeout,
            )
            for i in range(processes)
        ]
        return merge_results([f.result() for f in futures])


def shared_cores_note(server: str = "the server") -> str:
    """A line that says what shares this machine's cores during a run."""
    cores = os.cpu_count() or 1
    try:
        load = f"; load average before the run {os.getloadavg()[0]:.2f}"
    except OSError:
        load = ""
    return (
        f"{cores} CPU core(s) shared by {server} and the load generator (separate processes), "
        f"plus anything else running on this machine{load}"
    )


def format_result(result: LoadResult) -> str:
    """One line: requests, requests/s, latency percentiles, errors and client CPU."""
    line = (
        f"c={result.concurrency:<4d} {result.requests:7d} req in {result.duration_s:6.2f} s  "
        f"{result.requests_per_s:9.1f} req/s  p50 {result.p50_ms:8.3f} ms  "
        f"p90 {result.p90_ms:8.3f} ms  p99 {result.p99_ms:8.3f} ms  errors {result.errors}  "
        f"client cpu {100 * result.client_cpu_share:4.0f}%"
    )
    if result.error_samples:
        line += f"\n    first error: {result.error_samples[0]}"
    return line


def infer_body(arrays: Mapping[str, np.ndarray[Any, Any]], binary: bool) -> RequestSpec:
    """An Open Inference Protocol request for these inputs: all binary (with binary outputs,
    ``binary_data_output``) or all JSON."""
    from maas_client.codec import HEADER_LENGTH, datatype_of
    from maas_client.protocol import TensorPayload, encode_request

    payloads = [
        TensorPayload(name, array, datatype_of(array.dtype), binary=binary)
        for name, array in arrays.items()
    ]
    body = encode_request(payloads, parameters={"binary_data_output": True} if binary else None)
    if body.header_length is None:
        return RequestSpec(bytes(body.content), {"Content-Type": "application/json"})
    return RequestSpec(
        bytes(body.content),
        {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(body.header_length)},
    )


def infer_request(
    inputs: Sequence[tuple[str, str, Sequence[int]]], binary: bool, seed: int = 0
) -> RequestSpec:
    """:func:`infer_body` with random inputs ``(name, datatype, shape)``."""
    from maas_client.codec import DATATYPES

    rng = np.random.default_rng(seed)
    arrays = {}
    for name, datatype, shape in inputs:
        dtype = DATATYPES.get(datatype)
        if dtype is None or datatype == "BF16" or dtype.kind not in "biuf":
            raise ValueError(f"{datatype} inputs are not generated; give a --body-file")
        if dtype.kind == "f":
            arrays[name] = rng.standard_normal(shape).astype(dtype)
        else:
            arrays[name] = rng.integers(0, 2 if dtype.kind == "b" else 100, shape).astype(dtype)
    return infer_body(arrays, binary)


def _parse_input(text: str) -> tuple[str, str, list[int]]:
    try:
        name, datatype, dims = text.split(":")
        return name, datatype.upper(), [int(d) for d in dims.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--input takes NAME:DATATYPE:D1,D2,... (e.g. input:FP32:1,64), not {text!r}"
        ) from None


def _parse_levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 1,8,64, not {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("concurrency levels are positive integers")
    return levels


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Load a loopback HTTP endpoint with POST requests at one or more concurrency "
        "levels and report requests/s, p50/p90/p99 latency and errors.",
    )
    parser.add_argument("url", help="e.g. http://127.0.0.1:8000/v2/models/mlp/infer")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--body-file", type=Path, help="request body to send, as is")
    source.add_argument(
        "--input",
        type=_parse_input,
        action="append",
        help="build an inference request with a random input NAME:DATATYPE:D1,D2,... "
        "(repeat for several inputs)",
    )
    parser.add_argument(
        "-H", "--header", action="append", default=[], help="'Name: value' (with --body-file)"
    )
    parser.add_argument(
        "--binary", action="store_true", help="with --input: binary tensors in and out"
    )
    parser.add_argument("-c", "--concurrency", type=_parse_levels, default=[1, 8, 64])
    parser.add_argument("--count", type=int, default=1_000_000, help="max requests per level")
    parser.add_argument("--duration", type=float, default=5.0, help="max seconds per level")
    parser.add_argument(
        "--engine",
        choices=["httpx", "raw"],
        default="httpx",
        help="httpx (an AsyncClient per worker) or raw (hand-written HTTP/1.1, far cheaper)",
    )
    parser.add_argument(
        "--processes", type=int, default=1, help="client processes to split each level over"
    )
    parser.add_argument("--json", dest="json_out", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    try:
        check_loopback(args.url)
    except NonLoopbackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.body_file is not None:
        headers = {}
        for item in args.header:
            name, sep, value = item.partition(":")
            if not sep:
                parser.error(f"--header takes 'Name: value', not {item!r}")
            headers[name.strip()] = value.strip()
        spec = RequestSpec(args.body_file.read_bytes(), headers)
    else:
        spec = infer_request(args.input, args.binary)

    print(f"engine {args.engine}; {shared_cores_note()}")
    results = []
    for level in args.concurrency:
        if args.processes > 1:
            result = run_load_processes(
                args.url,
                spec,
                level,
                args.count,
                args.duration,
                args.processes,
                engine=args.engine,
            )
        else:
            result = run_load_blocking(
                args.url, spec, level, args.count, args.duration, engine=args.engine
            )
        print(format_result(result), flush=True)
        results.append(result)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps([r.summary() for r in results], indent=2))
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
