"""``maas serve --workers N``: N server processes on one port, under a supervisor.

The supervisor (the ``maas serve`` process) binds and listens on the port itself, then starts N
worker processes (``multiprocessing``, spawn: nothing of the supervisor's state is forked) that
accept connections from that one socket. It was chosen over ``SO_REUSEPORT`` (one socket per
worker) because:

- connections waiting in the accept queue belong to the socket, not to a worker: when a worker
  dies, those it had not accepted yet are taken by the others (with ``SO_REUSEPORT`` the
  kernel resets the connections queued on the dead worker's socket), and while a worker is
  replaced nothing is refused;
- the port is bound once, by one process: no other process can join it, and a worker that
  starts late cannot fail to bind.

A worker that is idle accepts sooner than a busy one, so the connections go mostly to the
workers with room (a busy event loop comes back to ``accept`` later).

Each worker is a full maas server (:func:`maas_server.create_app`) with
``Settings.worker`` set: the workers share one control plane and their statistics through a
runtime folder the supervisor makes (:mod:`maas_server.worker_sync`), and ONNX Runtime's threads
of each worker are ``cpus // N`` (at least 1) of the CPUs the process may use.

The supervisor replaces a worker that dies (after a pause that doubles, up to 30 s, while
replacements keep dying before they serve). On SIGTERM or Ctrl-C it sends SIGTERM to every
worker, which drains as one ``maas serve`` does (:mod:`maas_cli._graceful`); a worker still
alive ``graceful_timeout + EXIT_MARGIN_S`` seconds later is killed. A second signal is passed on
(the workers stop at once). The workers run in their own process group, so that a Ctrl-C in a
terminal reaches them once, through the supervisor; a worker whose supervisor is gone (killed)
drains and exits by itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from maas_server.worker_store import WorkerStore

__all__ = ["RESTART_MAX_S", "Supervisor", "WorkerSpec", "serve_workers", "worker_count"]

logger = logging.getLogger("maas_server")

RESTART_MAX_S = 30.0
"""The longest pause before replacing a worker whose previous replacements died at start."""
_RESTART_FIRST_S = 0.5
_KILL_MARGIN_S = 2.0


def worker_count(value: str) -> int:
    """``--workers``: a positive number, or ``auto`` (the CPUs this process may use, from its
    affinity and the cgroup quota); ValueError otherwise."""
    if value.strip().lower() == "auto":
        from maas_server.threads import available_cpus

        return available_cpus()
    count = int(value)
    if count < 1:
        raise ValueError(value)
    return count


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to run (pickled to it)."""

    settings: Any
    """The worker's ``maas_server.Settings`` (``worker`` and ``cpus`` set)."""
    uvicorn: dict[str, Any]
    """Keyword arguments of ``uvicorn.Config`` but the app."""
    graceful_timeout: float
    log_level: str
    access_log: bool
    sync_timeout_s: float = 120.0


def _watch_parent(parent: multiprocessing.connection.Connection) -> None:
    """Drain and exit when the supervisor is gone (the pipe's other end closes)."""
    with contextlib.suppress(EOFError, OSError):
        while True:
            parent.recv()
    os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(
    spec: WorkerSpec, sock: socket.socket, parent: multiprocessing.connection.Connection
) -> None:
    """A worker process: one maas server on the supervisor's socket."""
    os.setpgrp()  # signals from a terminal reach the supervisor alone
    index = spec.settings.worker.index
    logging.basicConfig(
        level=spec.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s[w{index}]: %(message)s",
    )
    import uvicorn

    from maas_cli._graceful import GracefulServer
    from maas_cli._tls import tls_floor
    from maas_server import create_app
    from maas_server.access_log import configure_access_logger
    from maas_server.keys_file import KeysFileError

    if spec.access_log:
        configure_access_logger()
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    try:
        app = create_app(spec.settings)
    except (KeysFileError, FileNotFoundError) as exc:
        print(f"maas serve: cannot start: {exc}", file=sys.stderr)
        sys.exit(2)
    config = uvicorn.Config(app, **spec.uvicorn)
    config.load()
    if config.ssl is not None:
        tls_floor(config.ssl)
    server = GracefulServer(config, app, spec.graceful_timeout)
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
    if not server.started:
        sys.exit(3)


@dataclass
class _Worker:
    index: int
    process: SpawnProcess
    pipe: multiprocessing.connection.Connection
    started_at: float


class Supervisor:
    """Runs ``count`` workers on ``sock`` until a signal (see the module)."""

    def __init__(
        self,
        spec: WorkerSpec,
        count: int,
        sock: socket.socket,
        *,
        folder: Path | None = None,
    ) -> None:
        from maas_server.threads import available_cpus

        self.count = count
        self.sock = sock
        self.spec = spec
        self.cpus = max(1, available_cpus() // count)
        self._own_folder = folder is None
        self.folder = folder or Path(tempfile.mkdtemp(prefix="maas-workers-"))
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._signals = 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._failures: dict[int, int] = {}  # worker index -> replacements that died at start
        self._due: dict[int, float] = {}  # worker index -> when to start its replacement
        self._store: WorkerStore | None = None

    def _spec_for(self, index: int) -> WorkerSpec:
        from maas_server import settings as server_settings

        worker = server_settings.WorkerSettings(
            self.folder, index, self.count, self.spec.sync_timeout_s
        )
        settings = dataclasses.replace(self.spec.settings, worker=worker, cpus=self.cpus)
        return dataclasses.replace(self.spec, settings=settings)

    def _start(self, index: int) -> None:
        parent_r, parent_w = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_main,
            args=(self._spec_for(index), self.sock, parent_r),
            name=f"maas-worker-{index}",
            daemon=False,
        )
        process.start()
        parent_r.close()
        self._workers[index] = _Worker(index, process, parent_w, time.monotonic())
        logger.info("worker %d started (pid %s)", index, process.pid)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._signals += 1
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _serving(self) -> set[int]:
        assert self._store is not None
        return {row.pid for row in self._store.serving()}

    def run(self) -> int:
        """Serve until a signal; the exit status (0; 1 when a worker had to be killed; the
        status of a worker that could not start)."""
        from maas_server.worker_store import WorkerStore

        self._store = WorkerStore(self.folder)  # the schema, before any worker
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for index in range(self.count):
                self._start(index)
            status = self._supervise()
            return self._shutdown() if status is None else status
        except BaseException:
            self._stop_all()  # no worker left behind by a supervisor that failed
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)
            if self._store is not None:
                self._store.close()
            if self._own_folder:
                shutil.rmtree(self.folder, ignore_errors=True)

    def _supervise(self) -> int | None:
        """Until a signal: None; or the status to exit with when a worker cannot start."""
        starting = True
        while not self._signals:
            sentinels: list[Any] = [w.process.sentinel for w in self._workers.values()]
            timeout = 0.2 if starting else 1.0
            if self._due:
                timeout = max(0.0, min(timeout, min(self._due.values()) - time.monotonic()))
            multiprocessing.connection.wait([*sentinels, self._wake_r], timeout)
            if self._signals:
                return None
            serving = self._serving()
            if starting and len(serving) >= self.count:
                starting = False
                logger.info("%d workers serving", self.count)
            for index, worker in list(self._workers.items()):
                if worker.process.is_alive():
                    if worker.process.pid in serving:
                        self._failures.pop(index, None)
                    continue
                code = worker.process.exitcode
                pid = worker.process.pid
                assert pid is not None
                worker.process.join()
                worker.pipe.close()
                del self._workers[index]
                self._dead(pid)
                if starting:
                    logger.error("worker %d (pid %d) could not start (status %s)", index, pid, code)
                    self._stop_all()
                    return code if code and code > 0 else 3
                failures = self._failures.get(index, 0)
                pause = 0.0 if failures == 0 else min(RESTART_MAX_S, _RESTART_FIRST_S * 2**failures)
                if pid not in serving and time.monotonic() - worker.started_at < RESTART_MAX_S:
                    self._failures[index] = failures + 1
                logger.error(
                    "worker %d (pid %d) exited (status %s): starting a replacement%s",
                    index,
                    pid,
                    code,
                    f" in {pause:g} s" if pause else "",
                )
                self._due[index] = time.monotonic() + pause
            for index, due in list(self._due.items()):
                if time.monotonic() >= due:
                    del self._due[index]
                    self._start(index)
        return None

    def _dead(self, pid: int) -> None:
        assert self._store is not None
        self._store.process_dead(pid)

    def _signal_all(self, sig: int) -> None:
        for worker in self._workers.values():
            if worker.process.pid is not None and worker.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, sig)

    def _stop_all(self) -> None:
        self._signal_all(signal.SIGTERM)
        for worker in self._workers.values():
            worker.process.join(self.spec.graceful_timeout + _KILL_MARGIN_S)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()

    def _shutdown(self) -> int:
        """Drain every worker (see the module); the exit status."""
        from maas_cli._graceful import EXIT_MARGIN_S

        logger.info(
            "shutting down %d workers (graceful timeout %g s)",
            self.count,
            self.spec.graceful_timeout,
        )
        self._signal_all(signal.SIGTERM)
        passed_on = 1
        deadline = time.monotonic() + self.spec.graceful_timeout + EXIT_MARGIN_S + _KILL_MARGIN_S
        status = 0
        while True:
            alive = [w for w in self._workers.values() if w.process.is_alive()]
            if not alive:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for worker in alive:
                    logger.error(
                        "worker %d (pid %s) did not exit: killing it",
                        worker.index,
                        worker.process.pid,
                    )
                    worker.process.kill()
                    worker.process.join()
                status = 1
                break
            multiprocessing.connection.wait(
                [*(w.process.sentinel for w in alive), self._wake_r], remaining
            )
            with contextlib.suppress(BlockingIOError, OSError):
                os.read(self._wake_r, 64)
            if self._signals > passed_on:  # a second signal: the workers stop at once
                passed_on = self._signals
                self._signal_all(signal.SIGTERM)
        for worker in self._workers.values():
            worker.process.join()
            code = worker.process.exitcode
            if code not in (0, None) and status == 0:
                status = 1
            worker.pipe.close()
        return status


def serve_workers(
    spec: WorkerSpec, count: int, host: str, port: int, backlog: int, ssl_on: bool
) -> int:
    """Bind ``host:port``, run ``count`` workers on it until a signal; the exit status."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        logger.error("cannot listen on %s:%d: %s", host, port, exc)
        sock.close()
        return 3
    sock.listen(backlog)
    sock.set_inheritable(True)
    scheme = "https" if ssl_on else "http"
    logger.info(
        "maas on %s://%s:%d with %d workers (supervisor pid %d)",
        scheme,
        host,
        sock.getsockname()[1],
        count,
        os.getpid(),
    )
    try:
        return Supervisor(spec, count, sock).run()
    finally:
        sock.close()
