"""The uvicorn server of ``maas serve``, with maas's graceful shutdown.

uvicorn alone, on SIGTERM, closes its listening socket at once: a readiness probe then gets
"connection refused" rather than 503, and a client that retries finds nothing there. This server
keeps listening while it drains (see :mod:`maas_server.shutdown`):

1. the first SIGTERM or Ctrl-C begins the app's drain: readiness 503, open generation streams
   end with an error event, new requests get 503 + ``Retry-After``;
2. once no request is in flight, or ``graceful_timeout`` seconds after the signal (requests
   still running then are cancelled; those whose answer has not started get 503), uvicorn shuts
   down, the app's lifespan ends (closing the models), the process exits with status 0;
3. if the process is still alive ``graceful_timeout + EXIT_MARGIN_S`` seconds after the signal
   (a model call that does not return holds its thread), it exits with status
   :data:`EXIT_FORCED`. A second signal ends the drain at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from maas_server.shutdown import Shutdown

__all__ = ["EXIT_FORCED", "EXIT_MARGIN_S", "GracefulServer"]

logger = logging.getLogger("maas_server")

EXIT_MARGIN_S = 5.0
"""Seconds beyond the graceful timeout left to uvicorn's shutdown and the app's lifespan."""
_CUT_WAIT_S = 1.0  # for the cancelled requests to send their 503
EXIT_FORCED = 1
"""Exit status when the process had to be ended after ``graceful_timeout + EXIT_MARGIN_S``."""


class GracefulServer(uvicorn.Server):
    """``uvicorn.Server`` that drains ``app`` (made by ``create_app``) before it shuts down."""

    def __init__(self, config: uvicorn.Config, app: Starlette, graceful_timeout: float) -> None:
        super().__init__(config)
        self.app = app
        self.graceful_timeout = graceful_timeout
        self.signalled_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the signal handler: only hand the work over to the event loop. The signal is
        # not recorded for uvicorn to raise again after its shutdown (the exit status stays 0).
        if self.signalled_at is not None or not self.started or self._loop is None:
            # a second signal, or one before the server listens: stop without (more) draining
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True
            self._arm_watchdog()
            return
        self._arm_watchdog()
        self._loop.call_soon_threadsafe(self._begin_drain)

    def _arm_watchdog(self) -> None:
        if self.signalled_at is not None:
            return
        self.signalled_at = time.monotonic()
        limit = self.graceful_timeout + EXIT_MARGIN_S

        def force_exit() -> None:
            logger.error(
                "still running %g s after the shutdown signal (a model call that does not "
                "return?): exiting now with status %d",
                limit,
                EXIT_FORCED,
            )
            sys.stderr.flush()
            os._exit(EXIT_FORCED)

        timer = threading.Timer(limit, force_exit)
        timer.daemon = True
        timer.start()

    def _begin_drain(self) -> None:
        shutdown: Shutdown = self.app.state.shutdown
        logger.info(
            "shutting down: not ready, new requests get 503; waiting up to %g s for %d "
            "request(s) in flight",
            self.graceful_timeout,
            shutdown.inflight,
        )
        shutdown.begin()
        assert self._loop is not None
        self._drain_task = self._loop.create_task(self._drain(shutdown))

    async def _drain(self, shutdown: Shutdown) -> None:
        if await shutdown.wait_idle(self.graceful_timeout):
            logger.info("drained: no request in flight")
        else:
            logger.warning(
                "%d request(s) still in flight after the graceful timeout of %g s: cancelling "
                "them (503 to those whose answer has not started)",
                shutdown.inflight,
                self.graceful_timeout,
            )
            await shutdown.cut(_CUT_WAIT_S)
        assert self.signalled_at is not None
        elapsed = time.monotonic() - self.signalled_at
        # uvicorn waits for its connections only for what is left of the graceful timeout
        self.config.timeout_graceful_shutdown = math.ceil(max(0.0, self.graceful_timeout - elapsed))
        self.should_exit = True
