"""The ``training`` job kind: train a model on a dataset the server holds, publish it.

``POST /v2/jobs`` with ``{"type": "training", "dataset": ..., "target": ..., "name": ...}`` and
the parameters of :mod:`maas_server.train_params`. :meth:`TrainingKind.validate` checks at
create time, reading the target column (and the text columns), what would otherwise fail later:
an unknown target or feature column, a target with one class, a feature that cannot be
encoded, too few rows for the splits, a parameter out of range (400, naming the problem).

:meth:`TrainingKind.run` waits for one of ``max_trainings`` slots, reads the columns, trains
in a child process (:mod:`maas_server.train_process`) and forwards each epoch as an ``epoch``
event (``{epoch, train_loss, val_loss, val_metric, elapsed_s}``) with the progress in epochs;
at the end it sends a ``metrics`` event (held-out metrics, the confusion matrix) and publishes
the model through the lifecycle path (:class:`~maas_server.publish.Publisher`: validated by
loading it, then atomically) as the next version of ``name``, with the provenance in the
version's metadata. A training that was running when the server stopped fails with
"interrupted by a server restart" (or starts again from the beginning with
``"on_restart": "restart"``); nothing is published before a training has ended well. Under
``maas serve --workers N`` the publication goes through the workers' log of changes, as the
repository API's does (:mod:`maas_server.worker_sync`): the job succeeds once every serving
worker serves the new version.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from maas_wire.jobs import JobInfo, JobProgress

from .datasets import DatasetNotFound
from .errors import BadRequestError, ForbiddenError, ServerError
from .jobs import JobCancelled, JobContext, JobFailed, RestartPolicy, ValidationContext
from .publish import Publisher, Upload
from .repository import valid_model_name
from .settings import Settings
from .threads import available_cpus
from .train_engine import ESTIMATOR_FILE, MODEL_FILE, check_split, decide_task, target_values
from .train_params import ParamError, TrainingParams
from .train_preprocess import FeatureColumn, FeatureError, check_categories, plan_features
from .train_process import TrainingProcess, TrainingRequest, write_columns
from .train_torch import available as torch_available
from .worker_store import Change
from .worker_sync import WorkerSync

__all__ = ["TrainingKind", "training_threads"]

logger = logging.getLogger("maas_server.training")

_CHUNK = 1024 * 1024
ARTIFACTS_DIR = "trainings"
"""Under the data folder: ``<job id>/estimator.pkl`` of each training, when
``keep_training_artifacts`` is on."""


def training_threads(settings: Settings) -> int:
    """The threads one training may use: ``training_threads``, or half the CPUs this
    process may use (at least one), so online requests keep the other half."""
    if settings.training_threads is not None:
        return max(1, settings.training_threads)
    return max(1, available_cpus() // 2)


class TrainingKind:
    """The ``training`` job kind (see the module's documentation)."""

    type = "training"

    def __init__(
        self, publisher: Publisher, settings: Settings, sync: WorkerSync | None = None
    ) -> None:
        self.publisher = publisher
        self.settings = settings
        self.sync = sync
        self.threads = training_threads(settings)
        self._slots: asyncio.Semaphore | None = None

    # --- create time --------------------------------------------------------------------------

    def validate(self, spec: dict[str, Any], ctx: ValidationContext) -> dict[str, Any]:
        try:
            params = TrainingParams.from_spec(spec)
        except ParamError as exc:
            raise BadRequestError(str(exc)) from None
        valid_model_name(params.name)
        if params.engine == "torch" and not torch_available():
            raise BadRequestError(
                "engine 'torch' needs PyTorch on the server, which is not installed there: "
                "pip install 'maas[torch]', or use engine 'sklearn'"
            )
        info = ctx.datasets.get(params.dataset, params.dataset_version)
        if not ctx.may_read(info.owner):
            raise DatasetNotFound(f"no dataset named {params.dataset!r}")  # as its routes say
        self._check_model_owner(params.name, ctx.owner)
        schema = [(f.name, f.datatype, f.shape) for f in info.schema_]
        try:
            features = plan_features(schema, params.target, params.features)
            target_field = info.field(params.target)
            categorical = [f.column for f in features if f.kind == "categorical"]
            checking = "a training being checked"
            with ctx.datasets.open(info.name, info.version, user=checking) as data:
                columns = data.read(0, data.num_rows(), [params.target, *categorical])
            values = columns[params.target]
            task = params.task or decide_task(target_field.datatype, values)
            y, _ = target_values(params.target, target_field.datatype, values, task)
            classes = len(set(y.tolist())) if task == "classification" else 0
            check_split(len(y), classes, params.validation_split, params.test_split)
            check_categories(columns, features, params.max_categories)
        except FeatureError as exc:
            raise BadRequestError(str(exc)) from None
        checked = params.to_spec()
        checked.update(dataset_version=info.version, task=task)
        return checked

    def _check_model_owner(self, name: str, owner: str | None) -> None:
        """403 when keys are on and ``name`` has a version on disk that this key did not
        publish: a training key may make new models, not replace another's."""
        if owner is None:
            return
        repository = self.publisher.repository
        if not (repository.root / name).is_dir():
            return
        published = self.publisher.index.versions(name)
        foreign = [
            v
            for v in repository.versions_on_disk(name)
            if v not in published or published[v].key_name != owner
        ]
        if foreign:
            raise ForbiddenError(
                f"model {name!r} has versions that key {owner!r} did not publish; a training "
                "publishes a new model, or a new version of a model this key published"
            )

    def initial_progress(self, spec: Mapping[str, Any]) -> JobProgress:
        return JobProgress(unit="epochs", done=0, total=_epochs(spec))

    def on_restart(self, job: JobInfo) -> RestartPolicy:
        return "restart" if job.spec.get("on_restart") == "restart" else "fail"

    # --- run ----------------------------------------------------------------------------------

    async def run(self, ctx: JobContext) -> dict[str, Any]:
        params = TrainingParams.from_spec(ctx.spec)
        task = str(ctx.spec["task"])
        total = _epochs(ctx.spec)
        if self._slots is None:
            self._slots = asyncio.Semaphore(max(1, self.settings.max_trainings))
        if self._slots.locked():
            ctx.log("waiting for a training slot (max_trainings are running)")
        async with self._slots:
            if ctx.cancelled:
                raise JobCancelled()
            info, features = await asyncio.to_thread(self._read, ctx, params)
            ctx.set_progress(0, total, "epochs")
            provenance = _provenance(ctx, params, task, info, features)
            request = TrainingRequest(
                spec=params.to_spec(),
                features=[f.describe() for f in features],
                target_datatype=info.field(params.target).datatype,
                task=task,
                out_dir=str(ctx.data_dir),
                metadata={"maas.training": provenance},
                threads=self.threads,
                nice=self.settings.training_nice,
                parent_pid=os.getpid(),
            )

            def on_epoch(data: dict[str, Any]) -> None:
                data.pop("epochs", None)
                ctx.emit("epoch", data)
                ctx.set_progress(int(data["epoch"]), total, "epochs")

            outcome = await TrainingProcess(request).run(on_epoch, lambda: ctx.cancelled)
        if outcome.state == "cancelled" or ctx.cancelled:
            raise JobCancelled()
        if outcome.state == "failed" or outcome.result is None:
            raise JobFailed(outcome.reason or "the training failed")
        trained = outcome.result
        ctx.set_progress(total, total, "epochs")
        ctx.emit(
            "metrics",
            {"metrics": trained["metrics"], "rows": trained["rows"], "task": task},
        )
        provenance.update(
            metrics=trained["metrics"],
            classes=trained["classes"],
            epochs=trained["epochs"],
            best_epoch=trained["best_epoch"],
            rows=trained["rows"],
            engine=trained["engine"],
            engine_version=trained["engine_version"],
        )
        if self.settings.keep_training_artifacts:
            await asyncio.to_thread(_keep_artifacts, ctx)
        entry = await self._publish(ctx, params.name, provenance)
        return {
            "model": params.name,
            "version": int(entry["version"]),
            "metrics": trained["metrics"],
            "task": task,
            "epochs": trained["epochs"],
            "best_epoch": trained["best_epoch"],
            "rows": trained["rows"],
            "engine": trained["engine"],
            "engine_version": trained["engine_version"],
            "process": trained.get("process"),  # the niceness and thread pools it ran with
        }

    def _read(self, ctx: JobContext, params: TrainingParams) -> tuple[Any, list[FeatureColumn]]:
        """The dataset's info, the planned features and their columns, written for the child
        (blocking)."""
        try:
            with ctx.datasets.open(
                params.dataset, params.dataset_version, user=f"training job {ctx.job_id}"
            ) as data:
                info = data.info
                schema = [(f.name, f.datatype, f.shape) for f in info.schema_]
                features = plan_features(schema, params.target, params.features)
                names = [params.target, *(f.column for f in features)]
                columns = data.read(0, data.num_rows(), names)
        except FeatureError as exc:
            raise JobFailed(str(exc)) from None
        except ServerError as exc:  # the dataset was deleted while the job was queued
            raise JobFailed(f"cannot read dataset {params.dataset!r}: {exc.message}") from None
        write_columns(ctx.data_dir, columns)
        return info, features

    async def _publish(
        self, ctx: JobContext, name: str, provenance: dict[str, Any]
    ) -> dict[str, Any]:
        path = ctx.data_dir / MODEL_FILE
        upload = Upload(
            limit=self.settings.max_upload_bytes,
            declared=path.stat().st_size,
            key=ctx.owner,
            metadata={"framework": provenance["engine"], "training": provenance},
        )
        since = self.sync.mark() if self.sync is not None else 0
        try:
            entry = await self.publisher.upload(name, None, _chunks(path), upload)
        except ServerError as exc:
            raise JobFailed(f"the trained model could not be published: {exc.message}") from None
        if self.sync is not None:  # every worker serves it before the job says succeeded
            try:
                await self.sync.changed(Change("follow", name), since)
            except ServerError as exc:
                raise JobFailed(
                    f"the trained model is published as version {entry['version']}, but not "
                    f"served by every worker yet: {exc.message}"
                ) from None
        return entry


def _epochs(spec: Mapping[str, Any]) -> int:
    return 1 if spec.get("model") == "linear" else int(spec.get("epochs", 50))


def _provenance(
    ctx: JobContext,
    params: TrainingParams,
    task: str,
    info: Any,
    features: list[FeatureColumn],
) -> dict[str, Any]:
    return {
        "job": ctx.job_id,
        "dataset": {"name": info.name, "version": info.version, "sha256": info.sha256},
        "target": params.target,
        "features": [f.describe() for f in features],
        "task": task,
        "model": params.model,
        "parameters": params.hyperparameters(),
        "seed": params.seed,
        "engine": "torch" if params.engine == "torch" else "scikit-learn",
    }


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as source:
        while True:
            chunk = await asyncio.to_thread(source.read, _CHUNK)
            if not chunk:
                return
            yield chunk


def _keep_artifacts(ctx: JobContext) -> None:
    """Copy the fitted estimator out of the job's scratch folder, which goes with the job."""
    target = ctx.data_dir.parent.parent / ARTIFACTS_DIR / ctx.job_id
    target.mkdir(parents=True, exist_ok=True)
    for name in (ESTIMATOR_FILE, MODEL_FILE):
        source = ctx.data_dir / name
        if source.is_file():
            shutil.copyfile(source, target / name)
