"""Fan many small requests out with ``AsyncClient``, a bounded number in flight at a time.

Each request is one image, as requests come from many users; a semaphore keeps at most
--concurrency of them on the wire. The server's dynamic batching (when the model's configuration
turns it on) may run several of them as one batch.

    python examples/async_fanout.py [--url URL] [--requests 200] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np

from maas_client import AsyncClient, InferResult


async def fan_out(url: str | None, requests: int, concurrency: int) -> list[InferResult]:
    images = np.random.default_rng(3).random((requests, 1, 64)).astype(np.float32) * 16
    limit = asyncio.Semaphore(concurrency)
    async with AsyncClient(url) as client:

        async def one(image: np.ndarray) -> InferResult:
            async with limit:
                return await client.infer("digits", image)

        return await asyncio.gather(*(one(image) for image in images))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="the server (default: MAAS_BASE_URL or 127.0.0.1:8000)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    start = time.perf_counter()
    results = asyncio.run(fan_out(args.url, args.requests, args.concurrency))
    seconds = time.perf_counter() - start
    labels = np.concatenate([result["label"] for result in results])
    latencies = sorted(result.timing.seconds * 1000 for result in results)
    print(f"{len(results)} requests in {seconds:.2f} s ({len(results) / seconds:.0f}/s)")
    print(f"latency p50 {latencies[len(latencies) // 2]:.1f} ms, max {latencies[-1]:.1f} ms")
    values, counts = np.unique(labels, return_counts=True)
    print("labels seen:", {int(v): int(c) for v, c in zip(values, counts, strict=True)})


if __name__ == "__main__":
    main()
