"""The ASGI application: ``create_app(settings)`` wires routes, middleware, error handlers and
lifespan."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .access_log import AccessLog
from .asgi import SCOPE_REQUEST_ID
from .auth import AccessControl, KeyStore
from .batch_job import BatchKind
from .dataplane import DataPlane
from .dataset_routes import close_dataset_store, dataset_routes, dataset_store
from .errors import ServerError
from .generate_routes import generate_routes
from .generation import GenerationService
from .guard import RequestGuard
from .job_routes import job_routes
from .jobs import JobRunner
from .metrics import MetricsServer, metrics_endpoint, metrics_registry
from .openai_routes import openai_routes
from .poll import RepositoryPoller
from .publish import Publisher
from .publish_routes import publish_routes
from .repository import ModelRepository
from .routes import JSONBytesResponse, routes
from .settings import Settings
from .shutdown import Shutdown, ShutdownGuard
from .stats import Rejections
from .threads import ThreadBudget
from .training_job import TrainingKind
from .worker_stats import WorkerStats
from .worker_sync import WorkerSync

__all__ = ["build_middleware", "create_app"]

logger = logging.getLogger("maas_server")


async def _server_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServerError)
    if exc.status_code == 413:
        request.app.state.rejections.add("payload_too_large")
    return JSONBytesResponse(
        {"error": exc.message}, status_code=exc.status_code, headers=exc.headers
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONBytesResponse(
        {"error": exc.detail}, status_code=exc.status_code, headers=exc.headers
    )


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    """A fault no route expected: the caller gets a plain 500 and the request id, the log gets
    the details and the traceback under that id (never the caller: the text of an exception
    may name files, settings or data of other requests)."""
    given = request.scope.get(SCOPE_REQUEST_ID)  # the access log's id, when it is on
    request_id = given.decode("ascii", "replace") if isinstance(given, bytes) else uuid.uuid4().hex
    logger.error(
        "unexpected error on %s %s (request id %s)",
        request.method,
        request.url.path,
        request_id,
        exc_info=exc,
    )
    return JSONBytesResponse(
        {"error": "internal server error", "request_id": request_id},
        status_code=500,
        headers={"X-Request-ID": request_id},
    )


def build_middleware(
    settings: Settings,
    rejections: Rejections,
    keys: KeyStore | None,
    shutdown: Shutdown | None = None,
) -> list[Middleware]:
    """The middleware stack, outermost first: CORS (only with origins; preflights carry no key),
    then one :class:`RequestGuard` (request ids, header limit, API keys, deadline, access log),
    then the :class:`ShutdownGuard` (requests in flight; 503 while the server drains)."""
    stack: list[Middleware] = []
    if settings.cors_origins:
        stack.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "PUT", "DELETE"],
                allow_headers=["*"],
                expose_headers=["Inference-Header-Content-Length", "X-Request-ID", "Retry-After"],
            )
        )
    access = AccessControl(keys, settings.open_paths, rejections) if keys is not None else None
    access_log = AccessLog(settings.access_log) if settings.access_log != "off" else None
    if access or access_log or settings.max_header_bytes or settings.request_timeout_s:
        stack.append(
            Middleware(
                RequestGuard,
                access=access,
                access_log=access_log,
                max_header_bytes=settings.max_header_bytes,
                timeout_s=settings.request_timeout_s,
                rejections=rejections,
            )
        )
    if shutdown is not None:
        stack.append(Middleware(ShutdownGuard, shutdown=shutdown, rejections=rejections))
    return stack


def create_app(settings: Settings) -> Starlette:
    """The maas server for one model repository.

    With ``model_control="none"`` every model is loaded when the app starts (its lifespan);
    loading failures are recorded in the repository index and do not stop the server.
    A keys file that cannot be read stops it here, before it serves anything.
    """
    repository = ModelRepository(
        settings.repository,
        inline_threshold_us=settings.inline_threshold_us,
        max_queue_size=settings.max_queue_size,
        allow_model_code=settings.allow_model_code,
        threads=ThreadBudget(settings.cpus) if settings.cpus else None,
    )
    dataplane = DataPlane(repository, settings)
    rejections = Rejections()
    sync = stats_source = None
    if settings.worker is not None:  # one of the processes of maas serve --workers N
        sync = WorkerSync(settings.worker, repository, rejections)
        stats_source = WorkerStats(sync, repository, rejections)
        dataplane.sync = sync
    keys = None
    if settings.auth_enabled:
        keys = KeyStore(
            settings.api_keys_file,
            settings.admin_api_key,
            reload_interval=settings.keys_reload_interval_s,
        )
    registry = metrics_registry(repository, rejections, stats_source)
    extra_routes: list[BaseRoute] = []
    if settings.metrics_port is None:
        extra_routes.append(Route("/metrics", metrics_endpoint, methods=["GET"]))
    generation = GenerationService(repository)
    poller = RepositoryPoller(repository, settings.poll_interval_s)
    shutdown = Shutdown()
    publisher = Publisher(repository)
    jobs = JobRunner(
        {"batch": BatchKind()},
        repository=repository,
        datasets=lambda: dataset_store(app),
        data_dir=settings.data_root,
        settings=settings,
    )
    jobs.register(TrainingKind(publisher, settings, sync))

    def not_ready() -> None:  # the first thing the drain does (see maas_server.shutdown)
        dataplane.started = False

    shutdown.subscribe(not_ready)
    if sync is not None:
        shutdown.subscribe(sync.leave)  # a worker that drains is not waited for
    # with several workers, the first serves the metrics port (it reads them all)
    metrics_here = settings.worker is None or settings.worker.index == 0

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        repository.bind_loop(asyncio.get_running_loop())
        poll_task = None
        if settings.model_control == "none":
            for name in repository.model_names():
                await asyncio.to_thread(repository.load, name)
        elif settings.model_control == "poll":
            await asyncio.to_thread(poller.start)
            poll_task = asyncio.create_task(poller.run())
        if sync is not None:
            await asyncio.to_thread(sync.start)
        metrics_server = None
        if settings.metrics_port is not None and metrics_here:
            metrics_server = MetricsServer(registry, settings.metrics_host, settings.metrics_port)
            metrics_server.start()
            app.state.metrics_server = metrics_server
        await jobs.start()
        dataplane.started = True
        try:
            yield
        finally:
            dataplane.started = False
            await jobs.stop()
            if poll_task is not None:
                poll_task.cancel()
            if metrics_server is not None:
                metrics_server.stop()
            await asyncio.to_thread(generation.close)
            if sync is not None:
                await asyncio.to_thread(sync.stop)
            await asyncio.to_thread(repository.close)
            repository.bind_loop(None)
            close_dataset_store(app)

    app = Starlette(
        routes=[
            *routes,
            *publish_routes,
            *dataset_routes,
            *generate_routes,
            *openai_routes,
            *job_routes,
            *extra_routes,
        ],
        middleware=build_middleware(settings, rejections, keys, shutdown),
        lifespan=lifespan,
        exception_handlers={
            ServerError: _server_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
    )
    app.state.dataplane = dataplane
    app.state.generation = generation
    app.state.publisher = publisher
    app.state.poller = poller
    app.state.jobs = jobs
    app.state.settings = settings
    app.state.shutdown = shutdown
    app.state.rejections = rejections
    app.state.keys = keys
    app.state.metrics_registry = registry
    app.state.sync = sync
    app.state.stats_source = stats_source
    return app
