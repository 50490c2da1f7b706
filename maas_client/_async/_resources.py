"""``client.server`` and ``client.models``: the protocol's server and model calls.

Each call is one plan (:mod:`maas_client._plans`) and one parser (:mod:`maas_client._answers`)
sent through the client's pipeline. ``client.with_raw_response`` mirrors these classes
(:class:`maas_client._raw.RawMirror`), so every call here has its raw variant.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._answers import (
    parse_flag,
    parse_json_object,
    parse_model,
    parse_model_config,
    parse_models,
    parse_nothing,
    parse_statistics,
)
from .._batched import ProgressLike
from .._exceptions import ModelNotFoundError
from .._plans import (
    plan_delete,
    plan_health,
    plan_load,
    plan_model_config,
    plan_model_metadata,
    plan_model_ready,
    plan_model_stats,
    plan_openapi,
    plan_publish,
    plan_repository_index,
    plan_server_metadata,
    plan_set_default,
    plan_unload,
    plan_versions,
)
from .._result import RepositoryIndex
from .._status import unsupported_endpoint
from .._types import CallOptions, VersionLike
from .._upload import async_prepare_upload
from ..types import (
    InferenceStatistics,
    ModelConfiguration,
    ModelMetadata,
    ModelVersionInfo,
    ModelVersions,
    ServerMetadata,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._pipeline import AsyncPipeline

__all__ = ["AsyncModels", "AsyncServer"]


def _key(name: str, version: VersionLike) -> tuple[str, str | None]:
    return (name, None if version is None or version == "" else str(version))


class AsyncServer:
    """``client.server``: health and metadata of the server."""

    def __init__(self, pipeline: AsyncPipeline) -> None:
        self._pipeline = pipeline

    async def live(self, **options: Unpack[CallOptions]) -> bool:
        """``GET /v2/health/live``: whether the server is up."""
        return await self._pipeline.call(plan_health("live"), options, parse_flag())

    async def ready(self, **options: Unpack[CallOptions]) -> bool:
        """``GET /v2/health/ready``: whether the server is ready to serve (``False`` on 503)."""
        return await self._pipeline.call(plan_health("ready"), options, parse_flag())

    async def metadata(self, **options: Unpack[CallOptions]) -> ServerMetadata:
        """``GET /v2``: the server's name, version and protocol extensions."""
        pipeline = self._pipeline
        return await pipeline.call(plan_server_metadata(), options, pipeline.remember_server)

    async def openapi(self, **options: Unpack[CallOptions]) -> dict[str, Any]:
        """``GET /v2/openapi.json``: the OpenAPI 3 document of every endpoint (maas servers)."""
        return await self._pipeline.call(plan_openapi(), options, parse_json_object)


class AsyncModels:
    """``client.models``: metadata, readiness, configuration and the model repository."""

    def __init__(self, pipeline: AsyncPipeline) -> None:
        self._pipeline = pipeline

    async def list(self, *, ready: bool = False, **options: Unpack[CallOptions]) -> RepositoryIndex:
        """``POST /v2/repository/index``: every model (``ready=True``: the ready ones)."""
        return await self._pipeline.call(plan_repository_index(ready), options, parse_models)

    async def get(
        self, name: str, version: VersionLike = None, **options: Unpack[CallOptions]
    ) -> ModelMetadata:
        """``GET /v2/models/{name}[/versions/{version}]``: the model's inputs and outputs."""
        pipeline = self._pipeline
        return await pipeline.call(
            plan_model_metadata(name, version),
            options,
            pipeline.remember_model(_key(name, version)),
        )

    async def ready(
        self, name: str, version: VersionLike = None, **options: Unpack[CallOptions]
    ) -> bool:
        """``GET /v2/models/{name}[/versions/{version}]/ready`` (``False`` on 503)."""
        key = _key(name, version)
        return await self._pipeline.call(plan_model_ready(name, version), options, parse_flag(*key))

    async def config(
        self, name: str, version: VersionLike = None, **options: Unpack[CallOptions]
    ) -> ModelConfiguration:
        """``GET /v2/models/{name}[/versions/{version}]/config``: the model's configuration.

        A server without this endpoint (MLServer, KServe) raises
        :class:`~maas_client.EndpointNotSupportedError` for a model it has;
        :class:`~maas_client.ModelNotFoundError` still means the model is not there.
        """
        pipeline = self._pipeline
        try:
            return await pipeline.call(
                plan_model_config(name, version), options, parse_model_config
            )
        except ModelNotFoundError as exc:
            if not await pipeline.model_exists(name, version, options):
                raise
            raise unsupported_endpoint(exc, "config") from None

    async def stats(
        self,
        model: str | None = None,
        version: VersionLike = None,
        **options: Unpack[CallOptions],
    ) -> InferenceStatistics:
        """``GET /v2/models[/{model}[/versions/{version}]]/stats``: Triton's statistics, every
        model's without ``model``."""
        return await self._pipeline.call(
            plan_model_stats(model, version), options, parse_statistics
        )

    async def load(
        self,
        name: str,
        *,
        config: Mapping[str, Any] | str | None = None,
        **options: Unpack[CallOptions],
    ) -> None:
        """``POST /v2/repository/models/{name}/load``; ``config`` overrides its configuration.

        Not retried once the request may have reached the server, unless the server answered
        that it did not act on it (408, 429, 503).
        """
        plan = plan_load(name, config)
        self._pipeline.state.forget_model(name)
        return await self._pipeline.call(plan, options, parse_nothing)

    async def unload(self, name: str, **options: Unpack[CallOptions]) -> None:
        """``POST /v2/repository/models/{name}/unload`` (retried like :meth:`load`)."""
        plan = plan_unload(name)
        self._pipeline.state.forget_model(name)
        return await self._pipeline.call(plan, options, parse_nothing)

    async def upload(
        self,
        name: str,
        source: Any,
        *,
        version: VersionLike = None,
        config: Mapping[str, Any] | str | None = None,
        metadata: Mapping[str, Any] | None = None,
        make_default: bool = True,
        example_inputs: Any = None,
        progress: ProgressLike = True,
        **options: Unpack[CallOptions],
    ) -> ModelMetadata:
        """Publish ``source`` as a version of ``name`` and return its metadata once it serves.

        ``source`` is a path to an ``.onnx`` file or to a version folder (sent as a tar
        archive: external data, tokenizer, labels, ``config.json``), the model's bytes, an
        ``onnx.ModelProto``, a scikit-learn estimator or pipeline (converted with skl2onnx:
        inputs ``input``, outputs ``label`` and ``probabilities`` for classifiers, with the
        classes as labels; ``maas[sklearn]``), or a ``torch.nn.Module`` with
        ``example_inputs=`` (exported with a dynamic batch dimension; ``maas[torch]``); a
        converted model gets ``max_batch_size`` 1024 unless ``config`` says otherwise. The body
        is streamed with its sha256, which the server checks; the server validates the model
        (ONNX Runtime session and warmup) before it publishes it, atomically, and nothing is
        published when it fails. ``version`` picks the number (default: the next one);
        ``config`` is the model's configuration; ``metadata`` is recorded as provenance with
        the framework and the API key's name; ``make_default=False`` publishes without moving
        unversioned requests to it. A progress bar shows where someone can see it.
        """
        prepared = await async_prepare_upload(
            source,
            name=name,
            config=config,
            metadata=metadata,
            example_inputs=example_inputs,
            progress=progress,
        )
        plan = plan_publish(name, version, prepared.body, prepared.headers, make_default)
        pipeline = self._pipeline
        try:
            entry = await pipeline.call(plan, options, parse_model(ModelVersionInfo))
        finally:
            prepared.body.close()
        pipeline.state.forget_model(name)
        return await self.get(name, entry.version, **options)

    async def versions(self, name: str, **options: Unpack[CallOptions]) -> ModelVersions:
        """``GET /v2/repository/models/{name}/versions`` (maas): every version with its state,
        size, sha256, creation time and provenance, the default one, and failed publishes."""
        return await self._pipeline.call(plan_versions(name), options, parse_model(ModelVersions))

    async def delete(
        self,
        name: str,
        version: VersionLike = None,
        *,
        force: bool = False,
        **options: Unpack[CallOptions],
    ) -> None:
        """Delete one version of ``name``, or the whole model without ``version``.

        The server refuses (409, :class:`~maas_client.ConflictError`) to delete the only
        version serving, or a model that still has versions, unless ``force=True``.
        """
        plan = plan_delete(name, version, force)
        self._pipeline.state.forget_model(name)
        await self._pipeline.call(plan, options, parse_nothing)

    async def set_default(
        self, name: str, version: VersionLike, **options: Unpack[CallOptions]
    ) -> None:
        """Make ``version`` the one that requests without a version reach: rollout and rollback
        are one call each (the old default serves until the new one is ready)."""
        plan = plan_set_default(name, version)
        self._pipeline.state.forget_model(name)
        await self._pipeline.call(plan, options, parse_nothing)
