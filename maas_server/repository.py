"""The model repository: a folder of ``<model>/<version>/model.onnx`` and what is loaded from it.

Loading builds a whole new record (every version the policy selects) before it replaces the old
one in a single assignment, so requests already running finish on the sessions they started on and
new requests see either the old model or the new one, never a mix. The versions of the old record
are then retired: each closes (sessions released, threads joined, engine stopped) once its
requests in flight are done. A model that fails to load keeps its reason for the index and does
not affect the others; a reload that fails leaves the versions already serving in place (as Triton
does) and the index reports the failed attempt next to them.

Publishing (:mod:`maas_server.publish`) adds versions through :meth:`ModelRepository.install`,
which renames a validated folder into place and swaps in a record that reuses the versions
already serving (same configuration, same files); :meth:`remove_version`, :meth:`remove_model`
and :meth:`set_default` are the other lifecycle calls. The default version (persisted in the
:class:`~maas_server.model_index.ModelIndex`) is what unversioned requests use; it is always
loaded, whatever the version policy selects. Replaced versions are retired from the event loop
(when one is bound), so that a request that took a version before the swap is counted in flight
before the version starts draining.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import threading
import uuid
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import CONFIG_FILES, ConfigError, ModelConfig, load_config, parse_config
from .errors import BadRequestError, ConflictError, ModelNotFoundError, ModelUnavailableError
from .model_index import INDEX_DIR, ModelIndex
from .model_version import ModelVersion
from .pipeline import Pipeline
from .runtime import ModelLoadError, OnnxModel, read_labels
from .settings import DEFAULT_MAX_QUEUE_SIZE
from .stats import ModelStats
from .threads import SMALL_MODEL_US, ThreadBudget

__all__ = [
    "MODEL_FILENAME",
    "ModelRecord",
    "ModelRepository",
    "VersionStatus",
    "folder_signature",
    "valid_model_name",
]

logger = logging.getLogger("maas_server")

MODEL_FILENAME = "model.onnx"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_VERSION = re.compile(r"^[0-9]{1,18}$")
DRAIN_TIMEOUT_S = 300.0
"""How long a replaced or unloaded version waits for its requests in flight before it closes."""


@dataclass
class VersionStatus:
    """The state of one version: READY with its model, or UNAVAILABLE with a reason."""

    version: int
    state: str
    reason: str = ""
    model: ModelVersion | None = None
    signature: tuple[tuple[str, int, int], ...] = ()
    """The version folder's files (path, size, mtime) when it was loaded."""


@dataclass
class ModelRecord:
    """What is known of one model: its configuration and the state of each selected version."""

    name: str
    state: str
    reason: str = ""
    config: ModelConfig | None = None
    versions: dict[int, VersionStatus] = field(default_factory=dict)
    reload_failure: str = ""
    """Why the last reload failed, while this record kept serving (shown in the index)."""
    default: int | None = None
    """The version unversioned requests use (None: the newest ready one)."""

    def ready_versions(self) -> list[int]:
        return sorted(v for v, s in self.versions.items() if s.model is not None)


class ModelRepository:
    """Models on disk and in memory. Blocking methods (:meth:`load`, :meth:`install`, ...)
    belong in worker threads."""

    def __init__(
        self,
        root: Path,
        *,
        inline_threshold_us: float = 0.0,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        threads: ThreadBudget | None = None,
        small_model_us: float = SMALL_MODEL_US,
        allow_model_code: bool = False,
    ) -> None:
        self.root = root.resolve()
        self.allow_model_code = allow_model_code
        self.max_queue_size = max_queue_size
        self.threads = threads if threads is not None else ThreadBudget()
        self.small_model_us = small_model_us
        self.inline_threshold_us = inline_threshold_us
        self.drain_timeout_s = drain_timeout_s
        if not self.root.is_dir():
            raise FileNotFoundError(f"model repository {root} is not a folder")
        self.index_store = ModelIndex(self.root)
        self._records: dict[str, ModelRecord] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._retiring: weakref.WeakSet[ModelVersion] = weakref.WeakSet()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Retire replaced versions from ``loop`` (the server's), between two steps of its
        requests: a request that took a version before a swap has then counted itself in
        flight, and the version drains it instead of refusing it."""
        self._loop = loop

    @property
    def staging(self) -> Path:
        """Where uploads are written before they are published (same filesystem as the
        repository, so publishing is a rename)."""
        return self.root / INDEX_DIR / "staging"

    def model_names(self) -> list[str]:
        """Every model folder in the repository, loaded or not."""
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and _NAME.match(p.name) and self._inside(p)
        )

    def _inside(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self.root)

    def model_dir(self, name: str) -> Path:
        """The folder of a model, refusing names that could reach outside the repository."""
        valid_model_name(name)
        path = self.root / name
        if not path.is_dir() or not self._inside(path):
            raise ModelNotFoundError(f"unknown model {name!r}: no such folder in the repository")
        return path

    def _lock(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(name, threading.Lock())

    def versions_on_disk(self, name: str) -> list[int]:
        """The version folders of a model that hold a model file."""
        return _versions_on_disk(self.model_dir(name))

    def load(
        self, name: str, config_override: str | None = None, *, reuse: bool = False
    ) -> ModelRecord:
        """(Re)load a model and swap it in; the returned record says how it went. With
        ``reuse``, versions already serving whose configuration and files did not change are
        kept as they are (the poll mode's reloads)."""
        model_dir = self.model_dir(name)
        with self._lock(name):
            previous = self._records.get(name)
            record = self._build(
                name, model_dir, config_override, reuse=previous if reuse else None
            )
            if record.state != "READY" and previous is not None and previous.ready_versions():
                # As Triton does: a failed reload leaves the serving version in place.
                previous.reload_failure = record.reason
                logger.error(
                    "model %s: reload failed, versions %s keep serving: %s",
                    name,
                    previous.ready_versions(),
                    record.reason,
                )
                self._retire(record, keep=previous)
                kept = ", ".join(str(v) for v in previous.ready_versions())
                return ModelRecord(
                    name,
                    record.state,
                    f"{record.reason} (version(s) {kept} loaded before keep serving)",
                    record.config,
                    record.versions,
                )
            self._swap(name, record)
        if record.state == "READY":
            logger.info("model %s ready (versions %s)", name, record.ready_versions())
        else:
            logger.error("model %s unavailable: %s", name, record.reason)
        if previous is not None:
            self._retire(previous, keep=record)
        return record

    def _swap(self, name: str, record: ModelRecord) -> None:
        self._records[name] = record
        self.threads.claim(name, _threads_used(record))

    def _retire(self, record: ModelRecord, keep: ModelRecord | None = None) -> None:
        """Close the versions of a record nobody is handed any more (all but those ``keep``
        serves), once their requests end."""
        kept = {id(s.model) for s in keep.versions.values()} if keep is not None else set()
        models = [
            s.model
            for s in record.versions.values()
            if s.model is not None and id(s.model) not in kept
        ]
        if not models:
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not loop:
                try:
                    loop.call_soon_threadsafe(self._retire_models, models)
                    return
                except RuntimeError:  # the loop closed meanwhile
                    pass
        self._retire_models(models)

    def _retire_models(self, models: Iterable[ModelVersion]) -> None:
        for model in models:
            self._retiring.add(model)
            model.retire(self.drain_timeout_s)

    def _build(
        self,
        name: str,
        model_dir: Path,
        config_override: str | None,
        *,
        reuse: ModelRecord | None = None,
        new: ModelVersion | None = None,
        default: int | bool | None = True,
    ) -> ModelRecord:
        """A new record for ``name``. ``reuse``: a record whose versions may be kept when the
        configuration and their files are unchanged; ``new``: a version already loaded (and
        validated) to serve as it is; ``default``: the default version (True: the persisted
        one)."""
        try:
            if config_override is not None:
                try:
                    data = json.loads(config_override)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"the config override is not valid JSON: {exc}") from None
                config = parse_config(data, "the config override")
            else:
                config = load_config(model_dir)
        except ConfigError as exc:
            return ModelRecord(name, "UNAVAILABLE", str(exc))
        on_disk = _versions_on_disk(model_dir)
        if default is True:
            default = self.index_store.default(name)
        if default is not None and default not in on_disk:
            default = None
        chosen = config.version_policy.select(on_disk)
        if default is not None and default not in chosen:
            chosen = sorted([*chosen, default])
        if not chosen:
            reason = (
                f"no version folder holds a {MODEL_FILENAME}"
                if not on_disk
                else f"the version policy selects none of the versions on disk {on_disk}"
            )
            return ModelRecord(name, "UNAVAILABLE", reason, config)
        reusable: dict[int, VersionStatus] = {}
        if reuse is not None and reuse.config == config:
            reusable = {v: s for v, s in reuse.versions.items() if s.model is not None}
        versions: dict[int, VersionStatus] = {}
        for version in chosen:
            folder = model_dir / str(version)
            signature = folder_signature(folder)
            if new is not None and new.version == version:
                versions[version] = VersionStatus(version, "READY", "", new, signature)
                continue
            old = reusable.get(version)
            if old is not None and old.signature == signature:
                versions[version] = old
                continue
            versions[version] = self._load_version(name, model_dir, version, config, signature)
        failed = [s for s in versions.values() if s.model is None]
        if len(failed) == len(versions):
            reason = "; ".join(f"version {s.version}: {s.reason}" for s in failed)
            return ModelRecord(name, "UNAVAILABLE", reason, config, versions, default=default)
        return ModelRecord(name, "READY", "", config, versions, default=default)

    def _load_version(
        self,
        name: str,
        model_dir: Path,
        version: int,
        config: ModelConfig,
        signature: tuple[tuple[str, int, int], ...],
    ) -> VersionStatus:
        path = model_dir / str(version) / MODEL_FILENAME
        try:
            if not self._inside(path):
                raise ModelLoadError(f"{path.name} links outside the model repository")
            model = self.open_version(name, version, path, config, model_dir)
            return VersionStatus(version, "READY", "", model, signature)
        except (ModelLoadError, ConfigError) as exc:
            return VersionStatus(version, "UNAVAILABLE", str(exc))

    def open_version(
        self,
        name: str,
        version: int,
        path: Path,
        config: ModelConfig,
        model_dir: Path,
        *,
        warmup: int = 0,
    ) -> ModelVersion:
        """Load one version file as a :class:`ModelVersion` (its labels from its own folder,
        else the model's), running ``warmup`` dummy requests on top of the configured ones;
        :class:`ModelLoadError` or :class:`ConfigError` say why it cannot be."""
        labels = None
        if isinstance(config.labels, list):
            labels = list(config.labels)
        elif config.labels:
            own = path.parent / config.labels
            labels = read_labels(path.parent if own.is_file() else model_dir, config.labels)
        onnx = OnnxModel.load(
            name,
            version,
            path,
            config,
            labels,
            self.inline_threshold_us,
            intra_op_threads=self.threads.share(name, config.instance_count),
            small_model_us=self.small_model_us,
        )
        if warmup and not config.warmup and config.task != "text-generation":
            try:
                onnx.warmup(warmup)
            except ModelLoadError:
                onnx.close()
                raise
        pipeline = None
        if config.steps() is not None:
            try:
                pipeline = Pipeline.load(
                    onnx, path.parent, model_dir, labels, self.allow_model_code
                )
            except (ModelLoadError, ConfigError):
                onnx.close()
                raise
        return ModelVersion(onnx, max_queue_size=self.max_queue_size, pipeline=pipeline)

    # --- publishing -------------------------------------------------------------------------

    def install(
        self,
        name: str,
        version: int,
        folder: Path,
        model: ModelVersion,
        *,
        config_file: Path | None = None,
        make_default: bool = True,
        replace: bool = False,
    ) -> ModelRecord:
        """Publish a validated version: rename ``folder`` (staged on the repository's
        filesystem) to ``<name>/<version>`` and ``config_file`` to the model's configuration,
        then swap in a record that serves ``model`` for it. 409 when the version exists,
        unless ``replace`` (Triton's load with files); the caller removes what is left of
        ``folder`` and closes ``model`` on failure."""
        valid_model_name(name)
        model_dir = self.root / name
        with self._lock(name):
            model_dir.mkdir(exist_ok=True)
            if not self._inside(model_dir):
                raise BadRequestError(f"model folder {name!r} links outside the repository")
            target = model_dir / str(version)
            replaced = None
            if target.exists():
                if not replace:
                    raise ConflictError(
                        f"model {name!r} already has a version {version}; delete it first or "
                        "publish another version"
                    )
                replaced = self._trash()
                os.rename(target, replaced)
            os.rename(folder, target)
            if config_file is not None:
                for other in CONFIG_FILES:
                    if (model_dir / other).exists() and other != config_file.name:
                        (model_dir / other).unlink()
                os.replace(config_file, model_dir / config_file.name)
            previous = self._records.get(name)
            default: int | bool | None = version if make_default else True
            record = self._build(name, model_dir, None, reuse=previous, new=model, default=default)
            if make_default:
                self.index_store.set_default(name, version)
            self._swap(name, record)
        if all(s.model is not model for s in record.versions.values()):
            model.retire(self.drain_timeout_s)  # published, but the version policy skips it
        logger.info(
            "model %s version %s published (serving %s)", name, version, record.ready_versions()
        )
        if previous is not None:
            self._retire(previous, keep=record)
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)
        return record

    def set_default(self, name: str, version: int) -> ModelRecord:
        """Make ``version`` the one unversioned requests use, loading it first when it is not
        serving: the old default answers until the new one is ready. 400 when it fails to
        load (nothing changes), 404 when there is no such version."""
        model_dir = self.model_dir(name)
        if version not in _versions_on_disk(model_dir):
            raise ModelNotFoundError(f"model {name!r} has no version {version} on disk")
        with self._lock(name):
            previous = self._records.get(name)
            record = self._build(name, model_dir, None, reuse=previous, default=version)
            status = record.versions.get(version)
            if status is None or status.model is None:
                self._retire(record, keep=previous)
                reason = status.reason if status is not None else record.reason
                raise BadRequestError(
                    f"model {name!r} version {version} cannot be the default: {reason}"
                )
            self.index_store.set_default(name, version)
            self._swap(name, record)
        if previous is not None:
            self._retire(previous, keep=record)
        return record

    def remove_version(self, name: str, version: int, *, force: bool = False) -> ModelRecord:
        """Stop serving a version and delete its folder. 409 when it is the only version
        serving or the last one on disk, unless ``force``."""
        model_dir = self.model_dir(name)
        folder = model_dir / str(version)
        if not folder.is_dir() or version not in _versions_on_disk(model_dir):
            raise ModelNotFoundError(f"model {name!r} has no version {version} on disk")
        with self._lock(name):
            previous = self._records.get(name)
            ready = previous.ready_versions() if previous is not None else []
            if ready == [version] and not force:
                raise ConflictError(
                    f"version {version} is the only version of model {name!r} serving; "
                    "publish another first, or delete with force=true"
                )
            if _versions_on_disk(model_dir) == [version] and not force:
                raise ConflictError(
                    f"version {version} is the last version of model {name!r}; delete the "
                    "model, or the version with force=true"
                )
            trash = self._trash()
            os.rename(folder, trash)
            default = self.index_store.default(name)
            if default == version:
                self.index_store.set_default(name, None)
            self.index_store.forget_version(name, version)
            record = self._build(name, model_dir, None, reuse=previous)
            if record.state != "READY" and not record.versions:
                record = ModelRecord(name, "UNAVAILABLE", record.reason, record.config)
            self._swap(name, record)
        if previous is not None:
            self._retire(previous, keep=record)
        shutil.rmtree(trash, ignore_errors=True)
        return record

    def remove_model(self, name: str, *, force: bool = False) -> None:
        """Stop serving a model and delete its folder. 409 while it has versions (serving or
        not), unless ``force``: a destructive call is confirmed, never implied."""
        model_dir = self.model_dir(name)
        with self._lock(name):
            previous = self._records.get(name)
            if previous is not None and previous.ready_versions() and not force:
                raise ConflictError(
                    f"model {name!r} is serving version(s) {previous.ready_versions()}; "
                    "delete with force=true"
                )
            on_disk = _versions_on_disk(model_dir)
            if on_disk and not force:
                raise ConflictError(
                    f"model {name!r} has version(s) {on_disk} on disk; deleting them all needs "
                    "force=true"
                )
            trash = self._trash()
            os.rename(model_dir, trash)
            self._records.pop(name, None)
            self.threads.release(name)
            self.index_store.forget_model(name)
        if previous is not None:
            self._retire(previous)
        shutil.rmtree(trash, ignore_errors=True)
        logger.info("model %s deleted", name)

    def _trash(self) -> Path:
        self.staging.mkdir(parents=True, exist_ok=True)
        return self.staging / f"deleted-{uuid.uuid4().hex}"

    def unload(self, name: str) -> None:
        """Stop serving a model; requests already running finish on it."""
        self.model_dir(name)
        with self._lock(name):
            previous = self._records.get(name)
            self._records[name] = ModelRecord(name, "UNAVAILABLE", "unloaded")
            self.threads.release(name)
        logger.info("model %s unloaded", name)
        if previous is not None:
            self._retire(previous)

    def forget(self, name: str) -> None:
        """Drop the record of a model whose folder is gone (the poll mode), retiring it."""
        with self._lock(name):
            previous = self._records.pop(name, None)
            self.threads.release(name)
        if previous is not None:
            self._retire(previous)

    def loaded_names(self) -> list[str]:
        return sorted(self._records)

    def record(self, name: str) -> ModelRecord:
        """The record of a model: 404 when there is no such model, a not-loaded record otherwise."""
        record = self._records.get(name)
        if record is not None:
            return record
        self.model_dir(name)
        return ModelRecord(name, "UNAVAILABLE", "not loaded")

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The model to serve a request with: the newest ready version unless one is named."""
        record = self.record(name)
        if version is None or version == "":
            ready = record.ready_versions()
            if not ready:
                raise ModelUnavailableError(
                    f"model {name!r} is not ready: {record.reason or 'no version is ready'}"
                )
            chosen = record.default if record.default in ready else ready[-1]
            model = record.versions[chosen].model
            assert model is not None
            return model
        if not _VERSION.match(version):
            raise BadRequestError(f"invalid model version {version!r}: versions are integers")
        status = record.versions.get(int(version))
        if status is None:
            if record.state != "READY":
                raise ModelUnavailableError(f"model {name!r} is not ready: {record.reason}")
            served = ", ".join(str(v) for v in sorted(record.versions))
            raise ModelNotFoundError(
                f"model {name!r} has no version {version} (versions served: {served})"
            )
        if status.model is None:
            raise ModelUnavailableError(
                f"model {name!r} version {version} is not ready: {status.reason}"
            )
        return status.model

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Rows of the repository index: one per loaded version, one per model otherwise."""
        rows: list[dict[str, Any]] = []
        for name in self.model_names():
            record = self._records.get(name) or ModelRecord(name, "UNAVAILABLE", "not loaded")
            if record.versions:
                for status in sorted(record.versions.values(), key=lambda s: s.version):
                    rows.append(
                        {
                            "name": name,
                            "version": str(status.version),
                            "state": status.state,
                            "reason": status.reason or _failed_reload(record),
                        }
                    )
            else:
                rows.append({"name": name, "state": record.state, "reason": record.reason})
        if ready_only:
            rows = [r for r in rows if r["state"] == "READY"]
        return rows

    def loaded_models(self) -> list[ModelVersion]:
        return [
            s.model
            for record in self._records.values()
            for s in record.versions.values()
            if s.model is not None
        ]

    def all_ready(self) -> bool:
        """True when every model that was asked to load is serving."""
        return all(
            r.state == "READY" for r in self._records.values() if r.reason not in ("unloaded",)
        )

    def version_stats(
        self, name: str | None = None, version: str | None = None
    ) -> list[tuple[str, int, ModelStats]]:
        """The statistics of every loaded version, of ``name``'s (404 for an unknown model), or
        of one version (none when it is not loaded)."""
        models: list[ModelVersion]
        if name is None:
            models = self.loaded_models()
        elif version is None or version == "":
            record = self.record(name)
            models = [s.model for s in record.versions.values() if s.model is not None]
        else:
            try:
                models = [self.get(name, version)]
            except ModelUnavailableError:
                models = []
        return [(m.name, m.version, m.stats) for m in models]

    def close(self) -> None:
        """Close every loaded version (at shutdown, once requests have drained)."""
        models = [*self.loaded_models(), *self._retiring]
        self._records.clear()
        for model in models:
            model.close()
        self.index_store.close()


def valid_model_name(name: str) -> str:
    """``name``, or 400 when it could not be a model folder of the repository."""
    if not _NAME.match(name):
        raise BadRequestError(
            f"invalid model name {name!r}: use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit"
        )
    return name


def _versions_on_disk(model_dir: Path) -> list[int]:
    return sorted(
        int(p.name)
        for p in model_dir.iterdir()
        if p.is_dir() and _VERSION.match(p.name) and (p / MODEL_FILENAME).is_file()
    )


def folder_signature(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """The files under ``folder`` as (relative path, size, mtime in ns), sorted: what tells
    that a version's files changed (or are still being copied)."""
    entries: list[tuple[str, int, int]] = []
    for dirpath, _dirs, files in os.walk(folder):
        for filename in files:
            path = os.path.join(dirpath, filename)
            try:
                st = os.stat(path)
            except OSError:
                continue
            entries.append((os.path.relpath(path, folder), st.st_size, st.st_mtime_ns))
    return tuple(sorted(entries))


def _failed_reload(record: ModelRecord) -> str:
    if not record.reload_failure:
        return ""
    return f"serving the previous load; the last reload failed: {record.reload_failure}"


def _threads_used(record: ModelRecord) -> int:
    """The intra-op threads a record's sessions take from the budget (single-threaded: none)."""
    total = 0
    for status in record.versions.values():
        if status.model is not None and status.model.onnx.intra_op_threads > 1:
            total += status.model.onnx.intra_op_threads * status.model.config.instance_count
    return total
