"""The client: one class over its pipeline, written once for ``async``/``await``
(:class:`AsyncClient`); the blocking :class:`~maas_client.Client` is generated from it."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from .._answers import infer_call
from .._batch_result import BatchError, BatchResult
from .._batched import (
    NO_CONFIG_STATUSES,
    ProgressLike,
    async_infer_batched,
    check_concurrency,
    declared_max_batch_size,
    plan_batch,
)
from .._classifications import Classifications
from .._core import ClientCore, EventHooks
from .._exceptions import APIStatusError, BadRequestError, NotFoundError
from .._generation import Generation, parse_generation, plan_generate
from .._inputs import Output, needs_metadata
from .._jobs import JobError
from .._local import AsyncLocalTransport
from .._raw import CLIENT_CALLS, RawMirror
from .._result import InferResult
from .._task_inputs import TEXT_INPUT, TaskInputs, task_inputs, text_list
from .._tasks import (
    check_top_k,
    classification_input,
    classifications_of,
    embeddings_of,
    plan_task_batch,
    raise_batch_error,
    require_embedding_model,
)
from .._types import CallOptions, VersionLike
from ..types import ModelConfiguration, ModelMetadata
from ._datasets import AsyncDatasets
from ._jobs import AsyncJobs
from ._pipeline import AsyncPipeline
from ._raw_calls import async_to_raw_response_wrapper
from ._resources import AsyncModels, AsyncServer
from ._streams import AsyncGenerationStream
from ._transports import open_transport

if TYPE_CHECKING:
    from typing_extensions import Self, Unpack

    from .._generation import GenerateOptions

__all__ = ["AsyncClient"]


class AsyncClient(ClientCore[httpx.AsyncClient]):
    """A client of an Open Inference Protocol server (maas, Triton, MLServer, KServe).

    >>> with Client("http://127.0.0.1:8000") as client:  # doctest: +SKIP
    ...     result = client.infer("digits", x)
    >>> async with AsyncClient("http://127.0.0.1:8000") as client:  # doctest: +SKIP
    ...     result = await client.infer("digits", x)

    Settings left out come from ``MAAS_BASE_URL``, ``MAAS_API_KEY``, ``MAAS_TIMEOUT`` and
    ``MAAS_MAX_RETRIES``. ``http_client`` injects an :class:`httpx.Client` (an
    :class:`httpx.AsyncClient` for :class:`AsyncClient`: proxies, TLS, transports); the client
    then never closes it. ``limits`` caps the connection pool and ``event_hooks`` are called
    with each request and response, as httpx's. Several URLs (a list, or
    :class:`~maas_client.Endpoints`) spread the requests over several servers, and :meth:`local`
    runs a server in-process.
    """

    server: AsyncServer
    models: AsyncModels
    datasets: AsyncDatasets
    jobs: AsyncJobs

    def _open(
        self,
        http_client: httpx.AsyncClient | None,
        limits: httpx.Limits | None,
        hooks: EventHooks,
        verify: Any,
    ) -> None:
        transport = open_transport(self.base_url, http_client, limits, verify, self.lean)
        self._pipeline = AsyncPipeline(
            self,
            transport,
            state=self._state,
            pool=self._pool,
            default_headers=self._default_headers,
            base_headers=http_client.headers if http_client is not None else {},
            hooks=hooks,
            owns_transport=http_client is None,
        )
        self._attach()

    def _copied(self) -> None:
        self._pipeline = self._pipeline.derive(
            self, state=self._state, pool=self._pool, default_headers=self._default_headers
        )
        self._attach()

    def _attach(self) -> None:
        self.server = AsyncServer(self._pipeline)
        self.models = AsyncModels(self._pipeline)
        self.datasets = AsyncDatasets(self._pipeline)
        self.jobs = AsyncJobs(self)

    def _serve_in_process(self, app: Any) -> None:
        self._pipeline.use_transport(AsyncLocalTransport(app))

    # --- lifetime ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection pool, unless it was injected or belongs to the original client."""
        await self._pipeline.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} base_url={self.base_url!r}>"

    @cached_property
    def with_raw_response(self) -> RawMirror:
        """The same calls, returning a :class:`~maas_client.RawResponse` each."""
        return RawMirror(self, async_to_raw_response_wrapper, CLIENT_CALLS)

    # --- inference -----------------------------------------------------------------------------

    async def infer(
        self,
        model: str,
        inputs: Any,
        *,
        version: VersionLike = None,
        outputs: Sequence[str | Output] | None = None,
        binary: bool | None = None,
        validate: bool | None = None,
        id: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        **options: Unpack[CallOptions],
    ) -> InferResult:
        """Run ``model`` on ``inputs`` and return its outputs as numpy arrays.

        ``inputs`` is a bare array or list (models with one input), a ``{name: array}`` mapping
        or a list of :class:`~maas_client.Input`. They are checked against the model's metadata
        (fetched once, cached) unless ``validate=False``. ``binary`` picks the encoding (default:
        binary when the server supports it); ``outputs`` limits what comes back; ``id`` and
        ``parameters`` go into the request as the protocol defines them.
        """
        pipeline = self._pipeline
        use_binary = await pipeline.use_binary(binary, options)
        check = self.validate if validate is None else validate
        metadata = None
        if check or needs_metadata(inputs):
            metadata = await pipeline.model_metadata(model, version, options)
        call = infer_call(
            model,
            version,
            inputs,
            metadata,
            check=check,
            binary=use_binary,
            outputs=outputs,
            id=id,
            parameters=parameters,
        )
        try:
            return await pipeline.call(call.plan, options, call.parse)
        except (BadRequestError, NotFoundError):
            pipeline.state.forget_model(model)  # the model may have changed under its name
            raise

    async def infer_batched(
        self,
        model: str,
        inputs: Any,
        *,
        batch_size: int | None = None,
        concurrency: int = 4,
        progress: ProgressLike = True,
        version: VersionLike = None,
        outputs: Sequence[str | Output] | None = None,
        binary: bool | None = None,
        validate: bool | None = None,
        parameters: Mapping[str, Any] | None = None,
        **options: Unpack[CallOptions],
    ) -> BatchResult:
        """Run ``model`` on many rows: split, sent ``concurrency`` requests at a time, joined.

        ``inputs`` are what :meth:`infer` takes, or a pandas DataFrame, with any number of rows
        (their first dimension). Each request carries at most the model's ``max_batch_size``
        rows, or ``batch_size``. The outputs come back in input order; ``progress`` shows a
        bar (in a notebook or a terminal; ``"always"``: also elsewhere). A request that still
        fails after its retries raises :class:`~maas_client.BatchError` once the others are
        done, carrying their outputs.

        >>> result = client.infer_batched("digits", x, concurrency=8)  # doctest: +SKIP
        """
        check_concurrency(concurrency)
        started = time.monotonic()
        pipeline = self._pipeline
        metadata = await pipeline.model_metadata(model, version, options)
        config, has_config = await self._batch_config(model, version, metadata, options)
        batch = plan_batch(inputs, metadata, config, batch_size, has_config=has_config)
        return await async_infer_batched(
            self.infer,
            model,
            batch,
            started=started,
            concurrency=concurrency,
            progress=progress,
            version=version,
            outputs=outputs,
            binary=await pipeline.use_binary(binary, options),
            validate=validate,
            parameters=parameters,
            options=options,
        )

    async def _batch_config(
        self, model: str, version: VersionLike, metadata: ModelMetadata, options: CallOptions
    ) -> tuple[ModelConfiguration | None, bool]:
        """The model's configuration when its metadata does not declare its batch size, and
        whether the server has a configuration endpoint."""
        if declared_max_batch_size(metadata) is not None:
            return None, True
        try:
            return await self.models.config(model, version, **options), True
        except APIStatusError as exc:
            if exc.status_code not in NO_CONFIG_STATUSES:
                raise
            return None, False  # MLServer, KServe: the batch size may be unknown

    # --- pipelines: texts and images in, embeddings and labels out -----------------------------

    async def embed(
        self,
        model: str,
        texts: str | Iterable[str],
        *,
        batch_size: int | None = None,
        concurrency: int = 4,
        progress: ProgressLike = False,
        version: VersionLike = None,
        **options: Unpack[CallOptions],
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The embeddings of ``texts`` (a str, or any number of them) as a float32 array
        ``[texts, dimensions]``, by a model whose configuration says ``"task": "embedding"``.

        The texts go in requests of at most the model's ``max_batch_size`` (or ``batch_size``),
        ``concurrency`` at a time, as :meth:`infer_batched` sends rows; the rows come back in
        the order of the texts. A request that fails after its retries raises its error when no
        text got an embedding, else a :class:`~maas_client.BatchError` carrying the others.

        >>> vectors = client.embed("minilm", ["a cat", "a kitten"])  # doctest: +SKIP
        >>> float(vectors[0] @ vectors[1])  # cosine: the vectors have length 1  # doctest: +SKIP
        """
        check_concurrency(concurrency)
        inputs = TaskInputs(TEXT_INPUT, text_list(texts, "embed"))
        metadata = await self._pipeline.model_metadata(model, version, options)
        require_embedding_model(metadata)
        result = await self._run_task(
            model, inputs, metadata, batch_size, concurrency, progress, version, None, options
        )
        return embeddings_of(result, len(inputs))

    async def classify(
        self,
        model: str,
        inputs: Any,
        *,
        top_k: int = 5,
        batch_size: int | None = None,
        concurrency: int = 4,
        progress: ProgressLike = False,
        version: VersionLike = None,
        **options: Unpack[CallOptions],
    ) -> Classifications:
        """The ``top_k`` labels and scores of each input, by a model whose configuration says
        ``"task": "text-classification"`` or ``"image-classification"``.

        ``inputs`` is one input or any iterable of them: texts (``str``) for a text classifier;
        for an image classifier, image files (a ``str`` or :class:`~pathlib.Path` is a path),
        their encoded bytes (JPEG, PNG, WebP...), PIL images or arrays of pixels (``uint8``
        ``[height, width(, channels)]``; both sent as PNG). Images are read when their request
        is sent. Requests are cut and sent as :meth:`embed` sends them.

        >>> result = client.classify("ppocr_cls", ["line.png", "flipped.png"])  # doctest: +SKIP
        >>> result[0][0]  # the best (label, score) of the first image  # doctest: +SKIP
        ('0', 0.9991)
        """
        check_concurrency(concurrency)
        check_top_k(top_k)
        metadata = await self._pipeline.model_metadata(model, version, options)
        kind = classification_input(metadata)
        task_input = task_inputs(inputs, kind, model)
        result = await self._run_task(
            model,
            task_input,
            metadata,
            batch_size,
            concurrency,
            progress,
            version,
            {"top_k": top_k},
            options,
        )
        return classifications_of(result, task_input)

    async def _run_task(
        self,
        model: str,
        inputs: TaskInputs,
        metadata: ModelMetadata,
        batch_size: int | None,
        concurrency: int,
        progress: ProgressLike,
        version: VersionLike,
        parameters: Mapping[str, Any] | None,
        options: CallOptions,
    ) -> BatchResult:
        started = time.monotonic()
        config, _ = await self._batch_config(model, version, metadata, options)
        batch = plan_task_batch(inputs, metadata, config, batch_size)
        try:
            return await async_infer_batched(
                self.infer,
                model,
                batch,
                started=started,
                concurrency=concurrency,
                progress=progress,
                version=version,
                outputs=None,
                binary=await self._pipeline.use_binary(None, options),
                validate=None,
                parameters=parameters,
                options=options,
            )
        except BatchError as exc:
            raise_batch_error(exc)

    # --- text generation -----------------------------------------------------------------------

    # --- training ------------------------------------------------------------------------------

    async def train(
        self,
        data: Any,
        *,
        target: str,
        name: str,
        dataset: str | None = None,
        model: str = "mlp",
        progress: ProgressLike = True,
        **params: Any,
    ) -> ModelMetadata:
        """The shortest path from a table to a served model: upload ``data`` (a pandas
        DataFrame, a pyarrow Table, a mapping of arrays or a file) as dataset ``dataset``
        (``name`` by default), train ``model`` on the server to predict column ``target``
        (``params`` as ``client.jobs.create_training`` takes them), wait for it (``progress``:
        the epochs and their loss) and return the metadata of the model version it published.
        Raises :class:`~maas_client.JobError` when the training fails or is cancelled.

        >>> meta = client.train(frame, target="species", name="iris")  # doctest: +SKIP
        """
        dataset_name = dataset or name
        await self.datasets.upload(dataset_name, data, progress=progress)
        job = await self.jobs.create_training(
            dataset_name, target=target, name=name, model=model, **params
        )
        await job.wait(progress=progress)
        if job.state != "succeeded":
            reason = f": {job.info.error}" if job.info.error else ""
            raise JobError(f"training job {job.id} {job.state}{reason}", job.info)
        return await job.model.metadata()

    async def generate(
        self,
        model: str,
        prompt: str,
        *,
        version: VersionLike = None,
        **params: Unpack[GenerateOptions],
    ) -> Generation:
        """Generate text from ``prompt`` with a text-generation ``model`` (Triton's generate
        extension) and return it whole.

        The keyword arguments are the sampling parameters (``max_tokens``, ``temperature``,
        ``top_k``, ``top_p``, ``seed``, ``stop``; left out: the model's defaults),
        ``return_token_ids``, ``id``, ``parameters`` (anything else the server understands) and
        the call options (``timeout``, ``max_retries``...).

        >>> client.generate("tiny_gpt", "Licensed under the", max_tokens=16).text  # doctest: +SKIP
        """
        plan, options = plan_generate(model, version, prompt, params, stream=False)
        return await self._pipeline.call(plan, options, parse_generation)

    def generate_stream(
        self,
        model: str,
        prompt: str,
        *,
        version: VersionLike = None,
        **params: Unpack[GenerateOptions],
    ) -> AsyncGenerationStream:
        """Like :meth:`generate`, as a stream of chunks that arrive while the model runs.

        Errors until the first chunk are retried like any call. A :class:`Client`'s stream is
        open when the call returns (its errors are raised there); an :class:`AsyncClient`'s
        opens when used: ``async with client.generate_stream(...) as stream``, or ``await`` it.
        Leaving the block, or the loop over the chunks, closes the connection and the server
        stops generating.

        >>> with client.generate_stream("tiny_gpt", "Hello") as stream:  # doctest: +SKIP
        ...     for chunk in stream:
        ...         print(chunk.text, end="", flush=True)
        """
        plan, options = plan_generate(model, version, prompt, params, stream=True)
        pipeline = self._pipeline
        return AsyncGenerationStream(lambda: pipeline.open_stream(plan, options))
