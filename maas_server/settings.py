"""Server-wide settings, set by ``maas serve`` flags or by the caller of ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_DATASET_BYTES",
    "DEFAULT_MAX_QUEUE_SIZE",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "OPEN_PATHS",
    "AccessLogFormat",
    "ModelControl",
    "Settings",
    "WorkerSettings",
    "default_repository",
]

ModelControl = Literal["none", "explicit", "poll"]
AccessLogFormat = Literal["text", "json", "off"]
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_UPLOAD_BYTES = 8 * 1024 * 1024 * 1024
DEFAULT_MAX_QUEUE_SIZE = 512
DEFAULT_MAX_DATASET_BYTES = 8 * 1024 * 1024 * 1024
DATA_DIR_NAME = (".maas", "data")
"""Where the data folder is by default, under the repository."""
"""Requests that may wait in each priority queue of a model whose configuration sets no
``max_queue_size``; one more gets 503 with ``Retry-After``."""
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready")
"""Paths answered without an API key when keys are configured (load balancers probe them)."""


def default_repository() -> Path:
    """The example repository shipped with maas (inside the wheel, or in the source tree)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "model_repository", here.parent / "examples" / "model_repository"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the bundled example model repository is missing from this install")


@dataclass(frozen=True)
class WorkerSettings:
    """This process is worker ``index`` of ``count`` (``maas serve --workers``), sharing the
    control plane and the statistics through ``folder`` (see :mod:`maas_server.worker_sync`).
    ``sync_timeout_s``: how long a change made through the API waits for every worker to
    serve it before it answers 504."""

    folder: Path
    index: int
    count: int
    sync_timeout_s: float = 120.0


@dataclass(frozen=True)
class Settings:
    """How the server behaves.

    ``model_control="none"`` loads every model of the repository at start; ``"explicit"`` loads
    only what is asked for through the repository API; ``"poll"`` loads everything at start,
    then looks at the repository every ``poll_interval_s`` and loads, reloads and unloads what
    changed (a version once its files are the same on two looks in a row).
    ``max_upload_bytes``: the largest model a publish request may upload (413; an API key may
    set a lower limit). ``strict_readiness`` (Triton's default)
    makes ``/v2/health/ready`` answer 503 while any model that should be served is not.
    ``inline_threshold_us``: requests whose estimated run time is below this many microseconds
    run on the event loop instead of a worker thread (0 turns it off). ``max_inflight``: requests
    accepted at once across all models; more get 503 with ``Retry-After`` (0: no limit).
    ``max_inflight_body_bytes``: request body bytes held at once across all requests; a body
    that does not fit gets 503 with ``Retry-After`` before it is read (0: no limit).
    ``max_queue_size``: requests that may wait in each priority queue of a model whose
    configuration sets none (its queue policy's ``max_queue_size`` 0); more get 503 with
    ``Retry-After`` (0: no limit).

    Access control (off unless ``api_keys_file`` or ``admin_api_key`` is set, see
    ``docs/security.md``): ``open_paths`` need no key; the keys file is re-read when it changes,
    checked at most every ``keys_reload_interval_s``. Limits: ``max_tensor_elements`` per input
    tensor, ``max_bytes_element_size`` per BYTES element (both 413), ``max_header_bytes`` (431),
    ``request_timeout_s`` until the answer starts (504; 0: none). ``cors_origins``: CORS stays
    off unless origins are listed. ``metrics_port``: serve ``/metrics`` there instead of on the
    main port. ``access_log``: one line per request on logger ``maas_server.access``.

    ``data_dir``: the folder of datasets (and jobs); None: ``<repository>/.maas/data``, made on
    first use. ``max_dataset_bytes``: the largest dataset upload (413).
    ``allow_model_code``: load pipeline models whose version folder holds Python hooks
    (``pre.py``, ``post.py``), which run as code inside the server: trusted models only; off,
    such a model fails to load.
    ``cpus``: the CPUs the models' ONNX Runtime threads share (None: all the process may use;
    each of N workers gets its share). ``worker``: set in each process of ``maas serve
    --workers N``.
    ``max_running_jobs``: jobs that run at once (the others wait in a queue).
    ``max_trainings``: training jobs that train at once (each in a process of its own);
    ``training_threads``: CPU threads each may use (None: half the CPUs the server may use);
    ``training_nice``: the niceness of the training processes (19, the lowest priority: serving
    in the same container or cgroup goes first; 0: an equal share of the CPU with everything else);
    ``keep_training_artifacts``: keep each training's fitted estimator under
    ``<data_dir>/trainings/<job id>/``.
    """

    repository: Path
    model_control: ModelControl = "none"
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_inflight_body_bytes: int = 4 * DEFAULT_MAX_BODY_BYTES
    strict_readiness: bool = True
    inline_threshold_us: float = 50.0
    max_inflight: int = 1024
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    api_keys_file: Path | None = None
    admin_api_key: str | None = field(default=None, repr=False)
    open_paths: tuple[str, ...] = OPEN_PATHS
    keys_reload_interval_s: float = 1.0
    max_tensor_elements: int = 64 * 1024 * 1024
    max_bytes_element_size: int = 16 * 1024 * 1024
    max_header_bytes: int = 16 * 1024
    request_timeout_s: float = 300.0
    cors_origins: tuple[str, ...] = ()
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    access_log: AccessLogFormat = "off"
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    poll_interval_s: float = 5.0
    data_dir: Path | None = None
    max_dataset_bytes: int = DEFAULT_MAX_DATASET_BYTES
    allow_model_code: bool = False
    cpus: int | None = None
    worker: WorkerSettings | None = None
    max_running_jobs: int = 2
    max_trainings: int = 1
    training_threads: int | None = None
    training_nice: int = 19
    keep_training_artifacts: bool = False

    @property
    def data_root(self) -> Path:
        """``data_dir``, or its default under the repository."""
        return (
            self.data_dir if self.data_dir is not None else self.repository.joinpath(*DATA_DIR_NAME)
        )

    @property
    def auth_enabled(self) -> bool:
        return self.api_keys_file is not None or bool(self.admin_api_key)
