"""``client.jobs``: batch inference (and training) jobs that the server runs on its own.

>>> job = client.jobs.create_batch("mlp", "rows")  # doctest: +SKIP
>>> job.wait(progress=True)  # doctest: +SKIP
>>> frame = job.result()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from maas_wire.jobs import JobEvent, JobInfo, JobProgress

from .._batched import ProgressLike, progress_bar
from .._exceptions import APIConnectionError, MaasError
from .._jobs import (
    JobError,
    batch_spec,
    is_terminal,
    job_html,
    job_repr,
    jobs_html,
    parse_job,
    parse_job_event,
    parse_jobs,
    plan_cancel_job,
    plan_create_job,
    plan_get_job,
    plan_job_events,
    plan_list_jobs,
)
from .._streaming import AsyncOpener
from .._training import EpochWatcher, training_metrics, training_spec
from .._types import CallOptions, VersionLike
from ._streams import AsyncStream
from ._training import AsyncTrainedModel

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._pipeline import AsyncPipeline


class AsyncClientLike(Protocol):
    """What jobs use of the client (not imported: the client imports this module)."""

    _pipeline: AsyncPipeline

    @property
    def datasets(self) -> Any: ...


__all__ = ["AsyncJob", "AsyncJobTable", "AsyncJobs"]

_RECONNECTS = 10
"""Event streams that may end early in a row (a server restarting) before ``events`` gives up."""


class AsyncJob:
    """One job on the server; :attr:`info` is what the server said last (:meth:`refresh`).

    >>> job = await client.jobs.create_batch("mlp", "rows")  # doctest: +SKIP
    >>> await job.wait()  # doctest: +SKIP
    >>> frame = await job.result()  # doctest: +SKIP
    """

    def __init__(self, client: AsyncClientLike, info: JobInfo) -> None:
        self._client = client
        self.info = info

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def state(self) -> str:
        return self.info.state

    @property
    def progress(self) -> JobProgress:
        return self.info.progress

    @property
    def done(self) -> bool:
        """Whether the job is over (as of the last :meth:`refresh`)."""
        return self.info.done

    @property
    def metrics(self) -> dict[str, Any] | None:
        """A training's held-out metrics (accuracy, macro F1, ROC AUC and the confusion
        matrix; or RMSE, MAE, R2), once it succeeded (as of the last :meth:`refresh`)."""
        return training_metrics(self.info)

    @property
    def model(self) -> AsyncTrainedModel:
        """The model version a training published, ready to ``infer``; :class:`JobError`
        before the training succeeded."""
        result = self.info.result or {}
        if self.info.type != "training" or self.state != "succeeded" or "model" not in result:
            raise JobError(
                f"job {self.id} ({self.info.type}, {self.state}) published no model", self.info
            )
        return AsyncTrainedModel(self._client, str(result["model"]), str(result["version"]))

    def __repr__(self) -> str:
        return job_repr(self.info)

    def _repr_html_(self) -> str:
        return job_html(self.info)

    async def refresh(self, **options: Unpack[CallOptions]) -> AsyncJob:
        """Ask the server where the job stands (``GET /v2/jobs/{id}``)."""
        self.info = await self._client._pipeline.call(plan_get_job(self.id), options, parse_job)
        return self

    async def cancel(self, **options: Unpack[CallOptions]) -> AsyncJob:
        """Cancel the job: a queued one at once, a running one at its next chunk or epoch."""
        plan = plan_cancel_job(self.id)
        self.info = await self._client._pipeline.call(plan, options, parse_job)
        return self

    async def events(
        self, after: int = 0, *, follow: bool = True, **options: Unpack[CallOptions]
    ) -> AsyncIterator[JobEvent]:
        """The job's events from number ``after`` on (``GET /v2/jobs/{id}/events``), until the
        one that says it is over (``follow=False``: only those so far). A stream that breaks (a
        server restart, a network fault) is opened again from the last event received
        (``Last-Event-ID``): none is lost or repeated."""
        last = after
        early = 0
        while True:
            opener = _opener(self._client, self.id, last, follow, options)
            stream = AsyncStream(opener, parse_job_event)
            try:
                async for event in stream:
                    early = 0
                    last = event.seq
                    yield event
                    if is_terminal(event):
                        return
                if not follow:
                    return
            except APIConnectionError:
                pass
            finally:
                await stream.close()
            early += 1
            if early > _RECONNECTS:
                raise MaasError(
                    f"the event stream of job {self.id} ended {early} times in a row before "
                    "the job did"
                )
            await asyncio.sleep(min(2.0, 0.1 * early))

    async def wait(
        self, *, progress: ProgressLike = True, **options: Unpack[CallOptions]
    ) -> AsyncJob:
        """Follow the job until it is over and return it (its final :attr:`info`);
        ``progress`` shows a bar (a live one in notebooks). A failed job does not raise here:
        look at :attr:`state`, or call :meth:`result`."""
        await self.refresh(**options)
        if self.done:
            return self
        bar = progress_bar(
            progress, int(self.progress.total), f"job {self.id[:8]}", self.progress.unit
        )
        shown = 0
        epochs = EpochWatcher(bar, f"job {self.id[:8]}") if self.info.type == "training" else None
        try:
            bar.update(int(self.progress.done))
            shown = int(self.progress.done)
            async for event in self.events(**options):
                if epochs is not None:
                    epochs.event(event)
                if event.type == "progress":
                    done = int(event.data.get("done", shown))
                    if done > shown:
                        bar.update(done - shown)
                        shown = done
        finally:
            bar.close()
        return await self.refresh(**options)

    async def result(self, *, format: str | None = None, **options: Unpack[CallOptions]) -> Any:
        """The results (waiting for the job first): for a batch job, its result dataset as
        ``{column: array}`` (``row``, then each output with its per-row shape), or as a pandas
        DataFrame with ``format="parquet"`` (see ``client.datasets.download``). Raises
        :class:`JobError` when the job failed or was cancelled."""
        if not self.done:
            await self.wait(progress=False, **options)
        if self.state != "succeeded" or not self.info.result:
            raise JobError(
                f"job {self.id} is {self.state}"
                + (f": {self.info.error}" if self.info.error else "")
                + "; it has no result",
                self.info,
            )
        result = self.info.result
        if "dataset" not in result:
            return dict(result)
        kwargs: dict[str, Any] = {"version": result.get("version")}
        if format is not None:
            kwargs["format"] = format
        return await self._client.datasets.download(result["dataset"], **kwargs, **options)


def _opener(
    client: AsyncClientLike, job_id: str, after: int, follow: bool, options: CallOptions
) -> AsyncOpener:
    plan = plan_job_events(job_id, after, follow)
    pipeline = client._pipeline
    return lambda: pipeline.open_stream(plan, options)


class AsyncJobTable(list[AsyncJob]):
    """Jobs, displayed as a table in notebooks."""

    def _repr_html_(self) -> str:
        return jobs_html([job.info for job in self])


class AsyncJobs:
    """``client.jobs``: create, list, follow and cancel jobs."""

    def __init__(self, client: AsyncClientLike) -> None:
        self._client = client

    async def create(
        self,
        spec: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncJob:
        """``POST /v2/jobs`` with ``spec`` (``{"type": ..., ...}``). An ``Idempotency-Key`` is
        sent (``idempotency_key``, or one made for this call): a retry returns the same job."""
        plan = plan_create_job(spec, idempotency_key)
        info = await self._client._pipeline.call(plan, options, parse_job)
        return AsyncJob(self._client, info)

    async def create_batch(
        self,
        model: str,
        dataset: str,
        *,
        version: VersionLike = None,
        dataset_version: int | None = None,
        inputs: Mapping[str, str | Sequence[str]] | None = None,
        outputs: Sequence[str] | None = None,
        batch_size: int | None = None,
        chunk_rows: int | None = None,
        concurrency: int | None = None,
        priority: int | None = None,
        stop_on_error: bool = False,
        endpoints: Sequence[str] | None = None,
        result_name: str | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncJob:
        """Run ``model`` over every row of ``dataset`` on the server (a batch job).

        ``inputs`` maps model inputs to columns (by name when they match; a list of scalar
        columns is stacked into one input); ``outputs`` keeps some outputs (all by default);
        ``batch_size`` rows per request (the model's ``max_batch_size`` by default), at most
        ``concurrency`` requests at once; ``chunk_rows`` rows committed at a time;
        ``priority`` (the model's lowest level by default, so online requests keep their
        latency); ``stop_on_error`` fails the job at the first failed chunk instead of going
        on; ``endpoints`` spreads the requests over several servers.

        >>> job = client.jobs.create_batch("mlp", "rows", batch_size=64)  # doctest: +SKIP
        """
        spec = batch_spec(
            model,
            dataset,
            version=version,
            dataset_version=dataset_version,
            inputs=inputs,
            outputs=outputs,
            batch_size=batch_size,
            chunk_rows=chunk_rows,
            concurrency=concurrency,
            priority=priority,
            stop_on_error=stop_on_error,
            endpoints=endpoints,
            result_name=result_name,
        )
        return await self.create(spec, idempotency_key=idempotency_key, **options)

    async def create_training(
        self,
        dataset: str,
        *,
        target: str,
        name: str,
        model: str = "mlp",
        features: Sequence[str] | None = None,
        hidden_layers: Sequence[int] | None = None,
        idempotency_key: str | None = None,
        options: CallOptions | None = None,
        **params: Any,
    ) -> AsyncJob:
        """Train a model on ``dataset`` (held by the server) to predict column ``target``, and
        publish it as the next version of ``name``.

        ``model``: ``"mlp"`` (hidden layers ``[128, 64]`` by default) or ``"linear"``;
        ``features``: the columns to learn from (all but the target by default); ``params``:
        ``task``, ``epochs``, ``batch_size``, ``learning_rate``, ``weight_decay``,
        ``activation``, ``optimizer``, ``early_stopping``, ``patience``,
        ``validation_split``, ``test_split``, ``seed``, ``engine`` (``"torch"``), ... (see
        the training guide). ``options``: per-call options of the request.

        >>> job = client.jobs.create_training("digits", target="digit", name="digits")
        ... # doctest: +SKIP
        """
        spec = training_spec(
            dataset,
            target=target,
            model=model,
            name=name,
            features=features,
            hidden_layers=hidden_layers,
            params=params,
        )
        return await self.create(spec, idempotency_key=idempotency_key, **(options or {}))

    async def get(self, job_id: str, **options: Unpack[CallOptions]) -> AsyncJob:
        """``GET /v2/jobs/{id}``."""
        info = await self._client._pipeline.call(plan_get_job(job_id), options, parse_job)
        return AsyncJob(self._client, info)

    async def list(self, **options: Unpack[CallOptions]) -> AsyncJobTable:
        """``GET /v2/jobs``: the caller's jobs (an admin key's: everyone's), newest first."""
        infos = await self._client._pipeline.call(plan_list_jobs(), options, parse_jobs)
        return AsyncJobTable(AsyncJob(self._client, info) for info in infos)
