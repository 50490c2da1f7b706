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
    parse_model_config,
    parse_models,
    parse_nothing,
    parse_statistics,
)
from .._exceptions import ModelNotFoundError
from .._plans import (
    plan_health,
    plan_load,
    plan_model_config,
    plan_model_metadata,
    plan_model_ready,
    plan_model_stats,
    plan_openapi,
    plan_repository_index,
    plan_server_metadata,
    plan_unload,
)
from .._result import RepositoryIndex
from .._status import unsupported_endpoint
from .._types import CallOptions, VersionLike
from ..types import InferenceStatistics, ModelConfiguration, ModelMetadata, ServerMetadata

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
