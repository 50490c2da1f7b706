"""Readiness probes of ejected endpoints, run beside the calls: a thread each for the blocking
client, a task each on the running loop for the asynchronous one."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from ._endpoints import Endpoint, EndpointPool

__all__ = ["async_cancel_probes", "cancel_probes", "start_async_probes", "start_probes"]


def start_probes(pool: EndpointPool, probe: Callable[[Endpoint], None]) -> None:
    """Probe the ejected endpoints that are due, each on a thread of its own."""
    for endpoint in pool.due_probes():
        threading.Thread(target=probe, args=(endpoint,), name="maas-probe", daemon=True).start()


def start_async_probes(
    pool: EndpointPool, probe: Callable[[Endpoint], Coroutine[Any, Any, None]]
) -> None:
    """Probe the ejected endpoints that are due, each in a task on the running loop."""
    for endpoint in pool.due_probes():
        task = asyncio.get_running_loop().create_task(probe(endpoint))
        pool.tasks.add(task)
        task.add_done_callback(pool.tasks.discard)


def cancel_probes(pool: EndpointPool | None) -> None:
    """Nothing to stop: the probe threads are daemons that end with their one request."""


async def async_cancel_probes(pool: EndpointPool | None) -> None:
    """Stop the probes still running (an asynchronous client is closing)."""
    if pool is None or not pool.tasks:
        return
    tasks = list(pool.tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
