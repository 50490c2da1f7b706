"""GPU check: maas serves models on CUDA, really, and what HTTP adds to a batch-1 call.

On a machine with an NVIDIA GPU and the ``server-cuda`` extra, this script

1. writes a repository of two models configured with
   ``{"execution_providers": ["CUDAExecutionProvider"], "require_gpu": true}``: the MLP of the
   throughput benchmark (64 -> 128 -> 10) and a 4-layer 1024-wide dense stack;
2. starts ``maas serve`` on it and fails (exit 1) unless every model is READY and the server
   reports ``CUDAExecutionProvider`` first both in the model metadata (``parameters.providers``)
   and in the model configuration (``execution_providers.active``), which maas reads from
   ``session.get_providers()``;
3. opens the same model files in this process with ONNX Runtime on CUDA and fails (exit 1) unless
   ``session.get_providers()`` puts ``CUDAExecutionProvider`` first;
4. checks that the server's answer matches the in-process one, then prints batch-1 latency over
   binary HTTP (an httpx client, and the cheap raw client of ``loadgen.py``) next to raw
   in-process ``session.run`` (numpy in and out, so both include the host<->device copies).

Every step is bounded (server start 120 s, each measurement ``--duration`` s), so the script ends
well under 5 minutes. Exit status: 0 checked, 1 a check failed, 2 this machine cannot run it (no
CUDA provider in this onnxruntime, or the ``onnx`` package missing). Install with
``pip install -e ".[server-cuda]" onnx`` (not the ``dev`` extra: it pulls the CPU onnxruntime,
which must not sit beside onnxruntime-gpu).

``--provider CPUExecutionProvider`` runs the same steps on CPU, to test this script without a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bare_starlette import make_session  # noqa: E402
from benchmarks.loadgen import (  # noqa: E402
    Engine,
    LoadResult,
    infer_body,
    run_load_blocking,
)
from benchmarks.servers import free_port, maas_command, serve  # noqa: E402

__all__ = ["main"]

GPU_PROVIDER = "CUDAExecutionProvider"
MODELS: dict[str, int] = {"mlp": 64, "dense": 1024}
"""Each model and its input width (input ``input`` FP32 [-1, width], output ``output``)."""


class CheckFailed(Exception):
    """A check did not hold; the message says which."""


def build_repository(root: Path, provider: str) -> Path:
    from tests import models

    config: dict[str, Any] = {"execution_providers": [provider], "max_batch_size": 64}
    if provider != "CPUExecutionProvider":
        config["require_gpu"] = True
    config["warmup"] = 3
    for name, model in (
        ("mlp", models.mlp_model(MODELS["mlp"], 128, 10)),
        ("dense", models.dense_stack_model(MODELS["dense"], 4)),
    ):
        models.save(model, root / name / "1" / "model.onnx")
        (root / name / "config.json").write_text(json.dumps(config))
    return root


def check_server(client: httpx.Client, base_url: str, provider: str) -> None:
    """Every model READY, with ``provider`` first in what the server says its sessions run."""
    index = client.post(f"{base_url}/v2/repository/index", json={}).json()
    for entry in index:
        if entry.get("state") != "READY":
            raise CheckFailed(
                f"model {entry.get('name')!r} is {entry.get('state')}: {entry.get('reason')}"
            )
    for name in MODELS:
        metadata = client.get(f"{base_url}/v2/models/{name}").json()
        active = metadata.get("parameters", {}).get("providers", [])
        config = client.get(f"{base_url}/v2/models/{name}/config").json()
        reported = config.get("execution_providers", {})
        print(
            f"  server {name}: metadata providers {active}, config active "
            f"{reported.get('active')}, fell_back_to_cpu {reported.get('fell_back_to_cpu')}"
        )
        if not active or active[0] != provider:
            raise CheckFailed(f"server model {name!r} runs on {active}, not {provider}")
        if not reported.get("active") or reported["active"][0] != provider:
            raise CheckFailed(
                f"server model {name!r} config says active {reported.get('active')}, not {provider}"
            )
        if reported.get("fell_back_to_cpu"):
            raise CheckFailed(f"server model {name!r} fell back to CPU")


def percentiles(latencies_ms: Sequence[float]) -> tuple[float, float, float]:
    p50, p90, p99 = np.percentile(np.asarray(latencies_ms), [50, 90, 99])
    return float(p50), float(p90), float(p99)


def raw_latencies(session: Any, feeds: dict[str, Any], duration: float, count: int) -> list[float]:
    for _ in range(20):
        session.run(None, feeds)
    latencies: list[float] = []
    deadline = time.perf_counter() + duration
    while len(latencies) < count and time.perf_counter() < deadline:
        start = time.perf_counter()
        session.run(None, feeds)
        latencies.append((time.perf_counter() - start) * 1e3)
    return latencies


def http_answer(client: httpx.Client, url: str, vector: np.ndarray[Any, Any]) -> Any:
    from maas_client.codec import HEADER_LENGTH
    from maas_client.protocol import decode_response

    spec = infer_body({"input": vector}, True)
    response = client.post(url, content=spec.body, headers=dict(spec.headers))
    if not response.is_success:
        raise CheckFailed(f"{url} answered {response.status_code}: {response.text[:300]}")
    length = response.headers.get(HEADER_LENGTH)
    _, tensors = decode_response(response.content, int(length) if length else None)
    return tensors["output"]


def line(name: str, path: str, latencies_ms: Sequence[float], errors: int = 0) -> str:
    p50, p90, p99 = percentiles(latencies_ms)
    return (
        f"{name:<6} {path:<34} {len(latencies_ms):>6} {p50:>9.3f} {p90:>9.3f} {p99:>9.3f} "
        f"{errors:>6}"
    )


def run(args: argparse.Namespace, workdir: Path) -> None:
    provider: str = args.provider
    repo = build_repository(workdir / "repository", provider)
    rng = np.random.default_rng(0)
    inputs = {
        name: rng.standard_normal((1, width)).astype(np.float32) for name, width in MODELS.items()
    }

    print("in-process onnxruntime:")
    sessions = {}
    for name in MODELS:
        session = make_session(repo / name / "1" / "model.onnx", [provider])
        active = session.get_providers()
        print(f"  raw {name}: session.get_providers() = {active}")
        if not active or active[0] != provider:
            raise CheckFailed(f"in-process session for {name!r} runs on {active}, not {provider}")
        sessions[name] = session

    port = free_port()
    lines: list[str] = []
    print("maas serve:")
    with (
        serve(
            "maas serve",
            maas_command(repo, port),
            port,
            workdir / "maas.log",
            ready_path="/v2/health/live",
        ) as server,
        httpx.Client(
            trust_env=False, headers={"Accept-Encoding": "identity"}, timeout=30
        ) as client,
    ):
        check_server(client, server.base_url, provider)
        for name, vector in inputs.items():
            url = f"{server.base_url}/v2/models/{name}/infer"
            expected = sessions[name].run(None, {"input": vector})[0]
            answer = http_answer(client, url, vector)
            if not np.allclose(answer, expected, rtol=1e-3, atol=1e-3):
                raise CheckFailed(f"{name}: the server's answer differs from in-process ORT's")
            latencies = raw_latencies(
                sessions[name], {"input": vector}, args.duration, args.requests
            )
            short = provider.removesuffix("ExecutionProvider")
            lines.append(line(name, f"in-process session.run ({short})", latencies))
            spec = infer_body({"input": vector}, True)
            engine: Engine
            for engine in ("httpx", "raw"):
                result: LoadResult = run_load_blocking(
                    url, spec, 1, args.requests, args.duration, engine=engine, timeout=30
                )
                if result.errors:
                    raise CheckFailed(f"{name} over {engine}: {result.error_samples[0]}")
                lines.append(
                    line(name, f"binary HTTP, {engine} client", result.latencies_ms, result.errors)
                )
        check_server(client, server.base_url, provider)

    heading = (
        f"{'model':<6} {'path':<34} {'calls':>6} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
        f"{'errors':>6}"
    )
    print(f"\nbatch-1 latency, concurrency 1, on {provider}:")
    print(heading)
    print("-" * len(heading))
    for text in lines:
        print(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check that maas serves on CUDA and compare batch-1 HTTP latency with raw "
        "in-process ONNX Runtime on CUDA.",
    )
    parser.add_argument("--requests", type=int, default=500, help="max calls per measurement")
    parser.add_argument("--duration", type=float, default=10.0, help="max seconds per measurement")
    parser.add_argument(
        "--provider",
        default=GPU_PROVIDER,
        help="the provider to check (CPUExecutionProvider tests this script without a GPU)",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()

    try:
        import onnxruntime as ort
    except ImportError as exc:
        print(f"gpu_check: onnxruntime is not installed ({exc})", file=sys.stderr)
        return 2
    available = ort.get_available_providers()
    if args.provider not in available:
        print(
            f"gpu_check: this onnxruntime ({ort.__version__}, {ort.get_device()}) has no "
            f"{args.provider}; it has {', '.join(available)}. Run this on a machine with an "
            'NVIDIA GPU after `pip install -e ".[server-cuda]" onnx` (and not the CPU '
            "onnxruntime beside it). Nothing was checked.",
            file=sys.stderr,
        )
        return 2
    try:
        import onnx  # noqa: F401
    except ImportError:
        print(
            "gpu_check: needs the onnx package to build its models: pip install onnx",
            file=sys.stderr,
        )
        return 2

    try:
        with tempfile.TemporaryDirectory(prefix="maas-gpu-check-") as tmp:
            run(args, Path(tmp))
    except CheckFailed as exc:
        print(f"\nFAIL: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # the server did not start
        print(f"\nFAIL: {exc}", file=sys.stderr)
        return 1
    print(
        f"\nOK: {args.provider} on the server and in process ({time.monotonic() - started:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
