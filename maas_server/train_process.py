"""A training in a process of its own, so it never holds the server's event loop or its
interpreter lock.

:class:`TrainingProcess` starts :func:`child_main` with the ``spawn`` start method (a fresh
interpreter: nothing of the server's threads or sessions is inherited), at a lower CPU priority
(``nice``) and with a thread budget: the BLAS/OpenMP pools of numpy and scikit-learn (and
torch's) get ``threads`` threads, so online requests keep the rest of the CPUs. The child sends
plain dicts back through a pipe: ``{"type": "epoch", "data": {...}}`` each epoch, then one of
``done`` (with the result), ``failed`` (with the reason) or ``cancelled``.

After each epoch the child waits for the server's answer, go on or stop, which the server gives
as soon as it has handled the epoch: a cancel stops the training at the end of the epoch under
way. (An event the child reads before each epoch says the same, for a cancel that comes before
the first epoch.) When the child does not end within a grace period after that (a stuck epoch),
it is terminated. The child
also dies with the server: Linux kills it when the server does (``PR_SET_PDEATHSIG``), and it
checks its parent before each epoch besides.

>>> process = TrainingProcess(request)  # doctest: +SKIP
>>> result = await process.run(on_epoch, cancelled=lambda: ctx.cancelled)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

__all__ = [
    "COLUMNS_FILE",
    "ProcessOutcome",
    "TrainingProcess",
    "TrainingRequest",
    "child_main",
    "write_columns",
]

logger = logging.getLogger("maas_server.training")

COLUMNS_FILE = "columns.pkl"
_THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
_PR_SET_PDEATHSIG = 1
_MIN_GRACE_S = 10.0


@dataclass(frozen=True)
class TrainingRequest:
    """Everything the child needs (pickled to it): the spec, the planned features, where the
    columns are and where to write."""

    spec: dict[str, Any]
    features: list[dict[str, Any]]
    target_datatype: str
    task: str
    out_dir: str
    metadata: dict[str, Any] = field(default_factory=dict)
    threads: int = 1
    nice: int = 19
    parent_pid: int = 0


@dataclass
class ProcessOutcome:
    """How the child ended: ``done`` (``result``), ``failed`` (``reason``) or ``cancelled``."""

    state: str
    result: dict[str, Any] | None = None
    reason: str | None = None


def write_columns(out_dir: Path, columns: Mapping[str, Any]) -> Path:
    """Write the columns the child reads (blocking)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / COLUMNS_FILE
    with path.open("wb") as out:
        pickle.dump(dict(columns), out, protocol=pickle.HIGHEST_PROTOCOL)
    return path


class TrainingProcess:
    """One training child process (see the module's documentation)."""

    def __init__(self, request: TrainingRequest) -> None:
        self.request = request
        self._context = multiprocessing.get_context("spawn")
        self._stop = self._context.Event()
        self._process: Any = None

    async def run(
        self,
        on_epoch: Callable[[dict[str, Any]], None],
        cancelled: Callable[[], bool],
        poll_s: float = 0.05,
    ) -> ProcessOutcome:
        """Start the child and follow it to its end; ``on_epoch`` gets each epoch's data and
        ``cancelled`` is asked every ``poll_s`` seconds."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        receive, send = self._context.Pipe(duplex=False)
        answers, answer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=child_main,
            args=(self.request, send, self._stop, answers),
            name="maas-training",
            daemon=True,
        )
        # started from the event loop's thread: the child's PR_SET_PDEATHSIG follows the thread
        # that forked it, and this one lives as long as the server
        process.start()
        self._process = process
        send.close()
        answers.close()

        def read() -> None:
            try:
                while True:
                    message = receive.recv()
                    loop.call_soon_threadsafe(queue.put_nowait, message)
            except (EOFError, OSError):
                pass
            except Exception:  # an unpicklable message: a fault of the child
                logger.exception("cannot read a message of the training process")
            finally:
                receive.close()
                loop.call_soon_threadsafe(queue.put_nowait, None)

        reader = threading.Thread(target=read, name="maas-training-reader", daemon=True)
        reader.start()
        outcome: ProcessOutcome | None = None
        stop_asked: float | None = None
        longest_epoch = 0.0
        last_epoch = time.monotonic()
        try:
            while True:
                if stop_asked is None and cancelled():
                    self._stop.set()
                    stop_asked = time.monotonic()
                elif stop_asked is not None and outcome is None:
                    grace = max(_MIN_GRACE_S, 3 * longest_epoch)
                    if time.monotonic() - stop_asked > grace:
                        logger.warning("training did not stop within %.0f s: terminated", grace)
                        process.terminate()
                        outcome = ProcessOutcome("cancelled")
                try:
                    message = await asyncio.wait_for(queue.get(), poll_s)
                except asyncio.TimeoutError:
                    continue
                if message is None:
                    break
                kind = message.get("type")
                if kind == "epoch":
                    now = time.monotonic()
                    longest_epoch = max(longest_epoch, now - last_epoch)
                    last_epoch = now
                    on_epoch(dict(message["data"]))
                    # the child waits for this before its next epoch: a cancel that came before
                    # this answer stops it now, not one epoch later
                    go = not cancelled()
                    if not go and stop_asked is None:
                        self._stop.set()
                        stop_asked = time.monotonic()
                    with contextlib.suppress(OSError):
                        answer.send(go)
                elif kind == "done":
                    outcome = ProcessOutcome("done", result=message["result"])
                elif kind == "failed":
                    outcome = ProcessOutcome("failed", reason=str(message["reason"]))
                elif kind == "cancelled":
                    outcome = ProcessOutcome("cancelled")
        finally:
            self._stop.set()
            answer.close()
            await asyncio.to_thread(_end, process)
        if outcome is None:
            if stop_asked is not None:
                return ProcessOutcome("cancelled")
            return ProcessOutcome(
                "failed",
                reason=f"the training process ended unexpectedly (exit code {process.exitcode})",
            )
        return outcome


def _end(process: Any, wait_s: float = 5.0) -> None:
    """Wait a little for the child to exit, then make it."""
    process.join(wait_s)
    if process.is_alive():
        process.terminate()
        process.join(wait_s)
    if process.is_alive():
        process.kill()
        process.join()


# --- the child ----------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the server dies (nothing elsewhere)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def child_main(request: TrainingRequest, conn: Connection, stop: Any, answers: Connection) -> None:
    """The child's entry point: limit threads, lower priority, train, report, exit. After each
    epoch it waits for the server's answer (go on, or stop)."""
    for variable in _THREAD_VARIABLES:
        os.environ[variable] = str(request.threads)
    _die_with_parent()
    if request.parent_pid and os.getppid() != request.parent_pid:
        return  # the server died before this process got here
    with contextlib.suppress(OSError):
        os.nice(request.nice)
    import warnings

    warnings.simplefilter("ignore")  # overflow on the way to divergence is reported as such

    told_to_stop = False

    def gone() -> bool:
        return request.parent_pid != 0 and os.getppid() != request.parent_pid

    def send(message: dict[str, Any]) -> None:
        nonlocal told_to_stop
        try:
            conn.send(message)
            if message["type"] == "epoch":
                while not answers.poll(1.0):
                    if gone():
                        os._exit(1)
                told_to_stop = not answers.recv()
        except (EOFError, OSError):
            os._exit(1)  # the server is gone: nobody to train for

    def should_stop() -> bool:
        return told_to_stop or gone() or bool(stop.is_set())

    try:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=request.threads):
            result = _train(request, send, should_stop)
            result["process"] = _budget()
        send({"type": "done", "result": result})
    except BaseException as exc:
        send(_failure(exc))
    finally:
        conn.close()
        answers.close()


def _budget() -> dict[str, Any]:
    """What this process ran with: its niceness and its numeric libraries' thread pools."""
    from threadpoolctl import threadpool_info

    return {
        "nice": os.nice(0),
        "thread_pools": {str(p["internal_api"]): int(p["num_threads"]) for p in threadpool_info()},
    }


def _train(
    request: TrainingRequest,
    send: Callable[[dict[str, Any]], None],
    should_stop: Callable[[], bool],
) -> dict[str, Any]:
    if request.spec.get("engine") == "torch":
        torch: Any = importlib.import_module("torch")

        torch.set_num_threads(request.threads)
    from .train_engine import train
    from .train_params import TrainingParams
    from .train_preprocess import FeatureColumn

    params = TrainingParams.from_spec(request.spec)
    features = [FeatureColumn.from_description(f) for f in request.features]
    out_dir = Path(request.out_dir)
    with (out_dir / COLUMNS_FILE).open("rb") as source:
        columns = pickle.load(source)
    return train(
        params,
        features,
        (request.target_datatype, columns[params.target]),
        columns,
        out_dir,
        task=request.task,
        emit=lambda type_, data: send({"type": type_, "data": dict(data)}),
        should_stop=should_stop,
        metadata=request.metadata,
    )


def _failure(exc: BaseException) -> dict[str, Any]:
    from .train_engine import TrainingCancelled, TrainingFailed
    from .train_preprocess import FeatureError

    if isinstance(exc, TrainingCancelled):
        return {"type": "cancelled"}
    if isinstance(exc, (TrainingFailed, FeatureError)):
        return {"type": "failed", "reason": str(exc)}
    traceback.print_exception(exc)
    return {"type": "failed", "reason": f"the training failed: {type(exc).__name__}: {exc}"}
