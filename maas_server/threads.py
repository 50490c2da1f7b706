"""How many threads ONNX Runtime may use: the CPUs this process may run on, as one budget.

``os.cpu_count()`` counts the machine's cores, not the ones the process may use: under
``taskset`` or in a container with a CPU quota, sessions sized from it oversubscribe the cores
they really get (an MLP pinned to one core served half the requests with a p99 28 times worse).
:func:`available_cpus` reads the CPU affinity (``os.sched_getaffinity``) and the cgroup v2 quota
(``cpu.max``); :class:`ThreadBudget` shares those CPUs out between the loaded models.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Collection
from pathlib import Path

__all__ = ["CGROUP_CPU_MAX", "SMALL_MODEL_US", "ThreadBudget", "available_cpus"]

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
SMALL_MODEL_US = 1000.0
"""A model whose warm run takes less than this many microseconds runs single-threaded: splitting
so little work across threads costs more than it saves."""


def _affinity() -> Collection[int]:
    if hasattr(os, "sched_getaffinity"):
        return os.sched_getaffinity(0)
    return range(os.cpu_count() or 1)


def cgroup_cpu_quota(path: Path = CGROUP_CPU_MAX) -> float | None:
    """The CPUs a cgroup v2 ``cpu.max`` file allows (``"150000 100000"``: 1.5), or None when
    there is no file, no quota (``"max ..."``) or nothing readable in it."""
    try:
        fields = path.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return None
    if not fields or fields[0] == "max":
        return None
    try:
        quota = int(fields[0])
        period = int(fields[1]) if len(fields) > 1 else 100_000
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def available_cpus(affinity: Collection[int] | None = None, cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The CPUs this process may use: its affinity, capped by the cgroup v2 quota (rounded up:
    a quota of 1.5 CPUs lets two threads run); at least 1."""
    cpus = len(_affinity() if affinity is None else affinity)
    quota = cgroup_cpu_quota(cpu_max)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


class ThreadBudget:
    """The CPUs of the process, shared out between the loaded models' sessions.

    A model's sessions get the CPUs that the other loaded models have not claimed, split evenly
    between its instances (:meth:`share`); once loaded, the model claims what it took
    (:meth:`claim`), and gives it back when it is unloaded (:meth:`release`). Single-threaded
    sessions claim nothing (they run on the thread that calls them). A model reloaded is
    offered its own share again, not what is left beside its previous load.
    """

    def __init__(self, cpus: int | None = None) -> None:
        self.cpus = max(1, cpus if cpus is not None else available_cpus())
        self._claims: dict[str, int] = {}
        self._lock = threading.Lock()

    def share(self, name: str, instances: int) -> int:
        """Intra-op threads for each of the ``instances`` sessions of model ``name``."""
        with self._lock:
            taken = sum(n for model, n in self._claims.items() if model != name)
        return max(1, (self.cpus - taken) // max(1, instances))

    def claim(self, name: str, threads: int) -> None:
        """Model ``name`` now uses ``threads`` threads in all (replacing what it claimed)."""
        with self._lock:
            if threads > 0:
                self._claims[name] = threads
            else:
                self._claims.pop(name, None)

    def release(self, name: str) -> None:
        self.claim(name, 0)

    def claims(self) -> dict[str, int]:
        with self._lock:
            return dict(self._claims)
