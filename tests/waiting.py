"""Sequencing tests on events and on the server's own state instead of on sleeps.

- :func:`until` polls a condition from a coroutine, with a deadline (the async twin of
  ``tests.conftest.wait_for``);
- :class:`Gate` holds the runs of a real :class:`~maas_server.runtime.OnnxModel` until the test
  opens it, so that "the first request is still running" is a fact the test controls, not a guess
  about how fast the machine is;
- :class:`StepGate` does the same for the steps of a
  :class:`~maas_server.generation.GenerationEngine`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from maas_server.generation import GenerationEngine
from maas_server.model_version import ModelVersion
from maas_server.runtime import OnnxModel

DEADLINE_S = 30.0
"""How long a test waits for a condition before it fails (generous: CI machines are busy)."""


async def until(predicate: Callable[[], object], timeout: float = DEADLINE_S) -> None:
    """Poll ``predicate`` (on the running loop) until it is true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


class Gate:
    """Holds the first ``hold`` runs of ``model`` until :meth:`open` (the others pass at once).

    The model still runs for real once the gate lets a run through. ``started`` counts the runs
    that have reached the gate, ``finished`` those that returned. Works from any event loop (an
    in-process app or a uvicorn thread): a held run polls a ``threading.Event``. A run held for
    longer than :data:`DEADLINE_S` goes on anyway, so a failing test cannot hang.
    """

    def __init__(self, model: OnnxModel | ModelVersion, hold: int = 1) -> None:
        if isinstance(model, ModelVersion):
            model = model.onnx  # a loaded version runs through its sessions' owner
        self.started = 0
        self.finished = 0
        self._hold = hold
        self._open = threading.Event()
        original = model.run

        async def run(
            feeds: dict[str, np.ndarray[Any, Any]], output_names: list[str], *more: Any
        ) -> dict[str, np.ndarray[Any, Any]]:
            self.started += 1
            if self.started <= self._hold:
                deadline = time.monotonic() + DEADLINE_S
                while not self._open.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(0.002)
            try:
                return await original(feeds, output_names, *more)
            finally:
                self.finished += 1

        model.run = run  # type: ignore[method-assign]

    async def wait_started(self, runs: int = 1) -> None:
        """Wait until ``runs`` runs have reached the gate."""
        await until(lambda: self.started >= runs)

    def open(self) -> None:
        self._open.set()


class StepGate:
    """Lets the first ``allow`` steps (``session.run`` calls, prefills included) of ``engine``
    through, then holds each further step until :meth:`release` lets more through or
    :meth:`open` lets all; the engine thread waits inside the held step, so the sequences it runs
    stay active and nothing more is generated. It also counts the engine's :meth:`cancel` calls
    (a stream whose client went away, or a stop string), which happen on the server's side while
    the engine waits.

    :meth:`install` puts it in place with ``monkeypatch``, and sets the engine's
    ``stream_interval`` to 0: every token is handed over to the HTTP side as soon as it is made.
    (With the default 1 ms, a token made within 1 ms of the previous hand-over waits for a later
    one, which never comes while the engine is held.) A step held for longer than
    :data:`DEADLINE_S` goes on anyway, so a failing test cannot hang.
    """

    def __init__(self, engine: GenerationEngine, allow: int) -> None:
        self.engine = engine
        self.passed = 0
        self.limit = allow
        self.cancels = 0
        self._changed = threading.Condition()
        self._execute = engine._execute
        self._cancel = engine.cancel

    @classmethod
    def install(
        cls, engine: GenerationEngine, monkeypatch: pytest.MonkeyPatch, allow: int
    ) -> StepGate:
        gate = cls(engine, allow)
        monkeypatch.setattr(engine, "_execute", gate.execute)
        monkeypatch.setattr(engine, "cancel", gate.cancel)
        monkeypatch.setattr(engine, "stream_interval", 0.0)
        return gate

    def execute(self, *args: Any) -> Any:
        with self._changed:
            self.passed += 1
            self._changed.notify_all()
            self._changed.wait_for(lambda: self.passed <= self.limit, DEADLINE_S)
        return self._execute(*args)

    def cancel(self, *args: Any, **kwargs: Any) -> None:
        self._cancel(*args, **kwargs)
        self.cancels += 1

    @property
    def holding(self) -> bool:
        """Whether a step waits at the gate now (the engine is paused)."""
        return self.passed > self.limit

    def release(self, steps: int) -> None:
        """Let ``steps`` more steps through (counting the one held now, if any)."""
        with self._changed:
            self.limit += steps
            self._changed.notify_all()

    def pause_after(self, steps: int) -> None:
        """Let ``steps`` more steps through from now, then hold again."""
        with self._changed:
            self.limit = self.passed + steps
            self._changed.notify_all()

    def open(self) -> None:
        self.release(10**9)


__all__ = ["DEADLINE_S", "Gate", "StepGate", "until"]
