"""``maas serve``: run the server (needs the ``server`` extra)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import ssl
from pathlib import Path
from typing import Annotated, Any

import typer

from ._tls import TLS_MINIMUM_VERSION, tls_floor

__all__ = ["TLS_MINIMUM_VERSION", "serve", "tls_floor"]

_ADMIN_KEY_ENV = "MAAS_SERVER_API_KEY"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    repository: Annotated[
        Path | None,
        typer.Argument(
            envvar="MAAS_SERVER_REPOSITORY",
            help="Model repository folder (default: the bundled examples).",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(envvar="MAAS_SERVER_HOST", help="Address to listen on.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="MAAS_SERVER_PORT", help="Port to listen on.")] = 8000,
    model_control: Annotated[
        str,
        typer.Option(
            envvar="MAAS_SERVER_MODEL_CONTROL",
            help="'none': load every model at start; 'explicit': only through the API; "
            "'poll': load at start, then follow changes of the repository folder.",
        ),
    ] = "none",
    log_level: Annotated[
        str, typer.Option(envvar="MAAS_SERVER_LOG_LEVEL", help="debug, info, warning or error.")
    ] = "info",
    max_body_size: Annotated[
        int,
        typer.Option(
            envvar="MAAS_SERVER_MAX_BODY_SIZE",
            help="Largest request body accepted, in bytes (413 above it).",
        ),
    ] = 64 * 1024 * 1024,
    api_keys_file: Annotated[
        Path | None,
        typer.Option(
            envvar="MAAS_SERVER_API_KEYS_FILE",
            help="API keys file (see 'maas keys'); re-read when it changes. With it, or with "
            f"an admin key in ${_ADMIN_KEY_ENV}, every request needs a key.",
        ),
    ] = None,
    protect_health: Annotated[
        bool,
        typer.Option(
            envvar="MAAS_SERVER_PROTECT_HEALTH",
            help="Require a key for /v2/health/live and /ready too.",
        ),
    ] = False,
    ssl_certfile: Annotated[
        Path | None,
        typer.Option(
            envvar="MAAS_SERVER_SSL_CERTFILE", help="TLS certificate chain (PEM): serve HTTPS."
        ),
    ] = None,
    ssl_keyfile: Annotated[
        Path | None, typer.Option(envvar="MAAS_SERVER_SSL_KEYFILE", help="TLS private key (PEM).")
    ] = None,
    ssl_ca_certs: Annotated[
        Path | None,
        typer.Option(
            envvar="MAAS_SERVER_SSL_CA_CERTS",
            help="CA bundle (PEM) for client certificates: clients must present one.",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            envvar="MAAS_SERVER_METRICS_PORT",
            help="Serve /metrics on this port instead of the main one: without API key or TLS, "
            "so on --metrics-host only.",
        ),
    ] = None,
    metrics_host: Annotated[
        str,
        typer.Option(
            envvar="MAAS_SERVER_METRICS_HOST",
            help="Address of --metrics-port (default loopback; another address exposes the "
            "metrics, unauthenticated and in clear, to whoever reaches it).",
        ),
    ] = "127.0.0.1",
    access_log: Annotated[
        str,
        typer.Option(
            envvar="MAAS_SERVER_ACCESS_LOG",
            help="One line per request on stderr: text, json or off.",
        ),
    ] = "text",
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            envvar="MAAS_SERVER_CORS_ORIGIN",
            help="An origin browsers may call from (repeat it); CORS is off without.",
        ),
    ] = None,
    max_tensor_elements: Annotated[
        int,
        typer.Option(
            envvar="MAAS_SERVER_MAX_TENSOR_ELEMENTS",
            help="Most elements in one input tensor (413 above; 0: no limit).",
        ),
    ] = 64 * 1024 * 1024,
    max_bytes_element_size: Annotated[
        int,
        typer.Option(
            envvar="MAAS_SERVER_MAX_BYTES_ELEMENT_SIZE",
            help="Longest BYTES element, in bytes (413 above; 0: no limit).",
        ),
    ] = 16 * 1024 * 1024,
    max_header_size: Annotated[
        int,
        typer.Option(
            envvar="MAAS_SERVER_MAX_HEADER_SIZE",
            help="Largest request headers, in bytes (431 above; 0: no limit).",
        ),
    ] = 16 * 1024,
    root_path: Annotated[
        str,
        typer.Option(
            envvar="MAAS_SERVER_ROOT_PATH",
            help="Path prefix a proxy serves maas under (e.g. /maas), which the proxy strips; "
            "routes and API keys see paths without it.",
        ),
    ] = "",
    request_timeout: Annotated[
        float,
        typer.Option(
            envvar="MAAS_SERVER_REQUEST_TIMEOUT",
            help="Seconds a request may take before its answer starts (504; 0: none).",
        ),
    ] = 300.0,
    graceful_timeout: Annotated[
        float,
        typer.Option(
            envvar="MAAS_SERVER_GRACEFUL_TIMEOUT",
            help="On SIGTERM or Ctrl-C: seconds the requests in flight have to finish while "
            "readiness is false and new requests get 503; then they are cancelled and maas "
            "exits.",
        ),
    ] = 30.0,
    max_queue_size: Annotated[
        int,
        typer.Option(
            envvar="MAAS_SERVER_MAX_QUEUE_SIZE",
            help="Requests that may wait in each queue of a model whose configuration sets no "
            "max_queue_size (503 + Retry-After above; 0: no limit).",
        ),
    ] = 512,
    max_inflight_body_bytes: Annotated[
        int,
        typer.Option(
            envvar="MAAS_SERVER_MAX_INFLIGHT_BODY_BYTES",
            help="Request body bytes held at once across all requests (503 + Retry-After "
            "above; 0: no limit).",
        ),
    ] = 4 * 64 * 1024 * 1024,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="MAAS_SERVER_DATA_DIR",
            help="Folder of the datasets (default: <repository>/.maas/data).",
        ),
    ] = None,
    max_dataset_bytes: Annotated[
        int,
        typer.Option(
            envvar="MAAS_SERVER_MAX_DATASET_BYTES",
            help="The largest dataset upload in bytes (413 above).",
        ),
    ] = 8 * 1024 * 1024 * 1024,
    allow_model_code: Annotated[
        bool,
        typer.Option(
            "--allow-model-code",
            envvar="MAAS_SERVER_ALLOW_MODEL_CODE",
            help="Load pipeline models with Python hooks (pre.py, post.py in the version "
            "folder): they run as code inside the server, so allow them for trusted models "
            "only. Without it such a model fails to load.",
        ),
    ] = False,
    workers: Annotated[
        str,
        typer.Option(
            envvar="MAAS_SERVER_WORKERS",
            metavar="N|auto",
            show_default=True,
            help="Server processes on the port, each loading the repository (ONNX Runtime's "
            "threads shared out between them); 'auto': one per CPU this process may use "
            "(affinity and cgroup quota).",
        ),
    ] = "1",
    worker_sync_timeout: Annotated[
        float,
        typer.Option(
            envvar="MAAS_SERVER_WORKER_SYNC_TIMEOUT",
            help="With --workers: seconds a load, unload or publication through the API waits "
            "for every worker to serve it (504 after; the late workers catch up).",
        ),
    ] = 120.0,
    max_trainings: Annotated[
        int,
        typer.Option(
            envvar="MAAS_SERVER_MAX_TRAININGS",
            min=1,
            help="Training jobs that train at once, each in a process of its own.",
        ),
    ] = 1,
    training_threads: Annotated[
        int | None,
        typer.Option(
            envvar="MAAS_SERVER_TRAINING_THREADS",
            min=1,
            help="CPU threads each training may use (default: half the server's CPUs).",
        ),
    ] = None,
    training_nice: Annotated[
        int,
        typer.Option(
            envvar="MAAS_SERVER_TRAINING_NICE",
            min=0,
            max=19,
            help="Niceness of the training processes: 19 (the default) lets serving go first; "
            "0 gives trainings an equal share of the CPU with everything else on the machine.",
        ),
    ] = 19,
    max_running_jobs: Annotated[
        int,
        typer.Option(
            envvar="MAAS_SERVER_MAX_RUNNING_JOBS",
            help="Jobs (batch inference, training) that run at once; the others wait.",
        ),
    ] = 2,
) -> None:
    """Serve a model repository over the Open Inference Protocol (KServe V2 / Triton).

    Example: maas serve ./models --port 8000 --model-control explicit
    """
    try:
        import uvicorn

        from maas_cli._graceful import GracefulServer
        from maas_server import Settings, create_app, default_repository
        from maas_server.access_log import configure_access_logger
        from maas_server.keys_file import KeysFileError
        from maas_server.settings import OPEN_PATHS
    except ImportError as exc:
        typer.echo(
            f"maas serve needs the server extra: pip install 'maas[server]' ({exc})", err=True
        )
        raise typer.Exit(2) from None
    if model_control not in ("none", "explicit", "poll"):
        raise typer.BadParameter("use 'none', 'explicit' or 'poll'", param_hint="--model-control")
    if access_log not in ("text", "json", "off"):
        raise typer.BadParameter("use 'text', 'json' or 'off'", param_hint="--access-log")
    if root_path and (not root_path.startswith("/") or root_path.endswith("/")):
        raise typer.BadParameter("start it with '/', without a final '/'", param_hint="--root-path")
    for value, flag in (
        (graceful_timeout, "--graceful-timeout"),
        (request_timeout, "--request-timeout"),
        (max_queue_size, "--max-queue-size"),
        (max_inflight_body_bytes, "--max-inflight-body-bytes"),
        (max_dataset_bytes, "--max-dataset-bytes"),
        (worker_sync_timeout, "--worker-sync-timeout"),
    ):
        if not value >= 0:  # also refuses nan
            raise typer.BadParameter("give 0 or more", param_hint=flag)
    try:
        from maas_cli._workers import worker_count

        count = worker_count(workers)
    except ValueError:
        raise typer.BadParameter(
            "give a number of 1 or more, or 'auto'", param_hint="--workers"
        ) from None
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise typer.BadParameter("give both --ssl-certfile and --ssl-keyfile")
    if ssl_ca_certs is not None and ssl_certfile is None:
        raise typer.BadParameter("client certificates need TLS: give --ssl-certfile too")
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if access_log != "off":
        # The access log follows --access-log, whatever --log-level says of other messages.
        configure_access_logger()
    admin_key = os.environ.get(_ADMIN_KEY_ENV) or None
    settings = Settings(
        repository=repository or default_repository(),
        model_control=model_control,  # type: ignore[arg-type]
        max_body_bytes=max_body_size,
        api_keys_file=api_keys_file,
        admin_api_key=admin_key,
        open_paths=() if protect_health else OPEN_PATHS,
        max_tensor_elements=max_tensor_elements,
        max_bytes_element_size=max_bytes_element_size,
        max_header_bytes=max_header_size,
        request_timeout_s=request_timeout,
        max_queue_size=max_queue_size,
        max_inflight_body_bytes=max_inflight_body_bytes,
        cors_origins=tuple(cors_origin or ()),
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        access_log=access_log,  # type: ignore[arg-type]
        data_dir=data_dir,
        max_dataset_bytes=max_dataset_bytes,
        allow_model_code=allow_model_code,
        max_trainings=max_trainings,
        training_threads=training_threads,
        training_nice=training_nice,
        max_running_jobs=max_running_jobs,
    )
    if not settings.auth_enabled and not _loopback(host):
        logging.getLogger("maas_server").warning(
            "listening on %s without API keys: anyone who reaches this address may use and "
            "manage every model (see --api-keys-file)",
            host,
        )
    if metrics_port is not None and not _loopback(metrics_host):
        logging.getLogger("maas_server").warning(
            "metrics on %s:%d without API key or TLS: anyone who reaches this address may read "
            "them (see --metrics-host)",
            metrics_host,
            metrics_port,
        )
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "root_path": root_path,
        "log_level": log_level.lower(),
        "access_log": False,  # maas writes its own (--access-log)
        "log_config": None,  # keep the logging set up above (uvicorn's would close its handlers)
        "ssl_certfile": str(ssl_certfile) if ssl_certfile else None,
        "ssl_keyfile": str(ssl_keyfile) if ssl_keyfile else None,
        "ssl_ca_certs": str(ssl_ca_certs) if ssl_ca_certs else None,
        "ssl_cert_reqs": ssl.CERT_REQUIRED if ssl_ca_certs else ssl.CERT_NONE,
        "timeout_graceful_shutdown": math.ceil(graceful_timeout),
    }
    if count > 1:
        from maas_cli._workers import WorkerSpec, serve_workers

        spec = WorkerSpec(
            settings, options, graceful_timeout, log_level, access_log != "off", worker_sync_timeout
        )
        status = serve_workers(spec, count, host, port, 2048, ssl_certfile is not None)
        if status:
            raise typer.Exit(status)
        return
    try:
        app = create_app(settings)
    except (KeysFileError, FileNotFoundError) as exc:
        # No keys to fall back on at start: refuse to serve rather than serve without them.
        typer.echo(f"maas serve: cannot start: {exc}", err=True)
        raise typer.Exit(2) from None
    config = uvicorn.Config(app, **options)
    config.load()
    if config.ssl is not None:
        tls_floor(config.ssl)
    server = GracefulServer(config, app, graceful_timeout)
    with contextlib.suppress(KeyboardInterrupt):  # a Ctrl-C while the event loop starts or ends
        server.run()
    if not server.started:
        raise typer.Exit(3)  # as uvicorn.run: it could not start (the log says why)
