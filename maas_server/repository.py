"""The model repository: a folder of ``<model>/<version>/model.onnx`` and what is loaded from it.

Loading builds a whole new record (every version the policy selects) before it replaces the old
one in a single assignment, so requests already running finish on the sessions they started on and
new requests see either the old model or the new one, never a mix. The versions of the old record
are then retired: each closes (sessions released, threads joined, engine stopped) once its
requests in flight are done. A model that fails to load keeps its reason for the index and does
not affect the others; a reload that fails leaves the versions already serving in place (as Triton
does) and the index reports the failed attempt next to them.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError, ModelConfig, load_config, parse_config
from .errors import BadRequestError, ModelNotFoundError, ModelUnavailableError
from .model_version import ModelVersion
from .runtime import ModelLoadError, OnnxModel, read_labels
from .settings import DEFAULT_MAX_QUEUE_SIZE
from .stats import ModelStats
from .threads import SMALL_MODEL_US, ThreadBudget

__all__ = ["MODEL_FILENAME", "ModelRecord", "ModelRepository", "VersionStatus"]

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

    def ready_versions(self) -> list[int]:
        return sorted(v for v, s in self.versions.items() if s.model is not None)


class ModelRepository:
    """Models on disk and in memory. Blocking methods (:meth:`load`) belong in worker threads."""

    def __init__(
        self,
        root: Path,
        *,
        inline_threshold_us: float = 0.0,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        threads: ThreadBudget | None = None,
        small_model_us: float = SMALL_MODEL_US,
    ) -> None:
        self.root = root.resolve()
        self.max_queue_size = max_queue_size
        self.threads = threads if threads is not None else ThreadBudget()
        self.small_model_us = small_model_us
        self.inline_threshold_us = inline_threshold_us
        self.drain_timeout_s = drain_timeout_s
        if not self.root.is_dir():
            raise FileNotFoundError(f"model repository {root} is not a folder")
        self._records: dict[str, ModelRecord] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._retiring: weakref.WeakSet[ModelVersion] = weakref.WeakSet()

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
        if not _NAME.match(name):
            raise BadRequestError(
                f"invalid model name {name!r}: use letters, digits, '_', '-' and '.', "
                "starting with a letter or digit"
            )
        path = self.root / name
        if not path.is_dir() or not self._inside(path):
            raise ModelNotFoundError(f"unknown model {name!r}: no such folder in the repository")
        return path

    def _lock(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(name, threading.Lock())

    def load(self, name: str, config_override: str | None = None) -> ModelRecord:
        """(Re)load a model and swap it in; the returned record says how it went."""
        model_dir = self.model_dir(name)
        with self._lock(name):
            record = self._build(name, model_dir, config_override)
            previous = self._records.get(name)
            if record.state != "READY" and previous is not None and previous.ready_versions():
                # As Triton does: a failed reload leaves the serving version in place.
                previous.reload_failure = record.reason
                logger.error(
                    "model %s: reload failed, versions %s keep serving: %s",
                    name,
                    previous.ready_versions(),
                    record.reason,
                )
                self._retire(record)
                kept = ", ".join(str(v) for v in previous.ready_versions())
                return ModelRecord(
                    name,
                    record.state,
                    f"{record.reason} (version(s) {kept} loaded before keep serving)",
                    record.config,
                    record.versions,
                )
            self._records[name] = record
            self.threads.claim(name, _threads_used(record))
        if record.state == "READY":
            logger.info("model %s ready (versions %s)", name, record.ready_versions())
        else:
            logger.error("model %s unavailable: %s", name, record.reason)
        if previous is not None:
            self._retire(previous)
        return record

    def _retire(self, record: ModelRecord) -> None:
        """Close the versions of a record nobody is handed any more, once their requests end."""
        for status in record.versions.values():
            if status.model is not None:
                self._retiring.add(status.model)
                status.model.retire(self.drain_timeout_s)

    def _build(self, name: str, model_dir: Path, config_override: str | None) -> ModelRecord:
        try:
            if config_override is not None:
                try:
                    data = json.loads(config_override)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"the config override is not valid JSON: {exc}") from None
                config = parse_config(data, "the config override")
            else:
                config = load_config(model_dir)
            labels = read_labels(model_dir, config.labels) if config.labels else None
        except ConfigError as exc:
            return ModelRecord(name, "UNAVAILABLE", str(exc))
        on_disk = sorted(
            int(p.name)
            for p in model_dir.iterdir()
            if p.is_dir() and _VERSION.match(p.name) and (p / MODEL_FILENAME).is_file()
        )
        chosen = config.version_policy.select(on_disk)
        if not chosen:
            reason = (
                f"no version folder holds a {MODEL_FILENAME}"
                if not on_disk
                else f"the version policy selects none of the versions on disk {on_disk}"
            )
            return ModelRecord(name, "UNAVAILABLE", reason, config)
        versions: dict[int, VersionStatus] = {}
        for version in chosen:
            path = model_dir / str(version) / MODEL_FILENAME
            try:
                if not self._inside(path):
                    raise ModelLoadError(f"{path.name} links outside the model repository")
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
                versions[version] = VersionStatus(
                    version, "READY", "", ModelVersion(onnx, max_queue_size=self.max_queue_size)
                )
            except ModelLoadError as exc:
                versions[version] = VersionStatus(version, "UNAVAILABLE", str(exc))
        failed = [s for s in versions.values() if s.model is None]
        if len(failed) == len(versions):
            reason = "; ".join(f"version {s.version}: {s.reason}" for s in failed)
            return ModelRecord(name, "UNAVAILABLE", reason, config, versions)
        return ModelRecord(name, "READY", "", config, versions)

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
            model = record.versions[ready[-1]].model
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
