"""``client.server`` and ``client.models``: the protocol's server and model calls.

Each call is one plan (:mod:`maas_client._base`) and one parser; the sync and async classes
differ only by ``await``. The ``*WithRawResponse`` classes mirror them for
``client.with_raw_response``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._base import (
    parse_flag,
    parse_json_object,
    parse_model_config,
    parse_models,
    parse_nothing,
    parse_statistics,
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
from ._response import async_to_raw_response_wrapper, to_raw_response_wrapper
from ._result import RepositoryIndex
from ._types import CallOptions, VersionLike
from .types import InferenceStatistics, ModelConfiguration, ModelMetadata, ServerMetadata

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._client import AsyncClient, Client

__all__ = [
    "AsyncClientWithRawResponse",
    "AsyncModels",
    "AsyncServer",
    "ClientWithRawResponse",
    "Models",
    "Server",
]


def _key(name: str, version: VersionLike) -> tuple[str, str | None]:
    return (name, None if version is None or version == "" else str(version))


class Server:
    """``client.server``: health and metadata of the server."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def live(self, **options: Unpack[CallOptions]) -> bool:
        """``GET /v2/health/live``: whether the server is up."""
        return self._client._call(plan_health("live"), options, parse_flag())

    def ready(self, **options: Unpack[CallOptions]) -> bool:
        """``GET /v2/health/ready``: whether the server is ready to serve (``False`` on 503)."""
        return self._client._call(plan_health("ready"), options, parse_flag())

    def metadata(self, **options: Unpack[CallOptions]) -> ServerMetadata:
        """``GET /v2``: the server's name, version and protocol extensions."""
        return self._client._call(plan_server_metadata(), options, self._client._remember_server)

    def openapi(self, **options: Unpack[CallOptions]) -> dict[str, Any]:
        """``GET /v2/openapi.json``: the OpenAPI 3 document of every endpoint (maas servers)."""
        return self._client._call(plan_openapi(), options, parse_json_object)


class Models:
    """``client.models``: metadata, readiness, configuration and the model repository."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, *, ready: bool = False, **options: Unpack[CallOptions]) -> RepositoryIndex:
        """``POST /v2/repository/index``: every model (``ready=True``: the ready ones)."""
        return self._client._call(plan_repository_index(ready), options, parse_models)

    def get(
        self, name: str, version: VersionLike = None, **options: Unpack[CallOptions]
    ) -> ModelMetadata:
        """``GET /v2/models/{name}[/versions/{version}]``: the model's inputs and outputs."""
        return self._client._call(
            plan_model_metadata(name, version),
            options,
            self._client._remember_model(_key(name, version)),
        )

    def ready(self, name: str, version: VersionLike = None, **options: Unpack[CallOptions]) -> bool:
        """``GET /v2/models/{name}[/versions/{version}]/ready`` (``False`` on 503)."""
        key = _key(name, version)
        return self._client._call(plan_model_ready(name, version), options, parse_flag(*key))

    def config(
        self, name: str, version: VersionLike = None, **options: Unpack[CallOptions]
    ) -> ModelConfiguration:
        """``GET /v2/models/{name}[/versions/{version}]/config``: the model's configuration."""
        return self._client._call(plan_model_config(name, version), options, parse_model_config)

    def stats(
        self,
        model: str | None = None,
        version: VersionLike = None,
        **options: Unpack[CallOptions],
    ) -> InferenceStatistics:
        """``GET /v2/models[/{model}[/versions/{version}]]/stats``: Triton's statistics, every
        model's without ``model``."""
        return self._client._call(plan_model_stats(model, version), options, parse_statistics)

    def load(
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
        self._client._state.forget_model(name)
        return self._client._call(plan, options, parse_nothing)

    def unload(self, name: str, **options: Unpack[CallOptions]) -> None:
        """``POST /v2/repository/models/{name}/unload`` (retried like :meth:`load`)."""
        plan = plan_unload(name)
        self._client._state.forget_model(name)
        return self._client._call(plan, options, parse_nothing)


class AsyncServer:
    """``client.server`` of an :class:`~maas_client.AsyncClient`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def live(self, **options: Unpack[CallOptions]) -> bool:
        """``GET /v2/health/live``: whether the server is up."""
        return await self._client._call(plan_health("live"), options, parse_flag())

    async def ready(self, **options: Unpack[CallOptions]) -> bool:
        """``GET /v2/health/ready``: whether the server is ready to serve (``False`` on 503)."""
        return await self._client._call(plan_health("ready"), options, parse_flag())

    async def metadata(self, **options: Unpack[CallOptions]) -> ServerMetadata:
        """``GET /v2``: the server's name, version and protocol extensions."""
        return await self._client._call(
            plan_server_metadata(), options, self._client._remember_server
        )

    async def openapi(self, **options: Unpack[CallOptions]) -> dict[str, Any]:
        """``GET /v2/openapi.json``: the OpenAPI 3 document of every endpoint (maas servers)."""
        return await self._client._call(plan_openapi(), options, parse_json_object)


class AsyncModels:
    """``client.models`` of an :class:`~maas_client.AsyncClient`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self, *, ready: bool = False, **options: Unpack[CallOptions]) -> RepositoryIndex:
        """``POST /v2/repository/index``: every model (``ready=True``: the ready ones)."""
        return await self._client._call(plan_repository_index(ready), options, parse_models)

    async def get(
        self, name: str, version: VersionLike = None, **options: Unpack[CallOptions]
    ) -> ModelMetadata:
        """``GET /v2/models/{name}[/versions/{version}]``: the model's inputs and outputs."""
        return await self._client._call(
            plan_model_metadata(name, version),
            options,
            self._client._remember_model(_key(name, version)),
        )

    async def ready(
        self, name: str, version: VersionLike = None, **options: Unpack[CallOptions]
    ) -> bool:
        """``GET /v2/models/{name}[/versions/{version}]/ready`` (``False`` on 503)."""
        key = _key(name, version)
        return await self._client._call(plan_model_ready(name, version), options, parse_flag(*key))

    async def config(
        self, name: str, version: VersionLike = None, **options: Unpack[CallOptions]
    ) -> ModelConfiguration:
        """``GET /v2/models/{name}[/versions/{version}]/config``: the model's configuration."""
        return await self._client._call(
            plan_model_config(name, version), options, parse_model_config
        )

    async def stats(
        self,
        model: str | None = None,
        version: VersionLike = None,
        **options: Unpack[CallOptions],
    ) -> InferenceStatistics:
        """``GET /v2/models[/{model}[/versions/{version}]]/stats``; see :meth:`Models.stats`."""
        return await self._client._call(plan_model_stats(model, version), options, parse_statistics)

    async def load(
        self,
        name: str,
        *,
        config: Mapping[str, Any] | str | None = None,
        **options: Unpack[CallOptions],
    ) -> None:
        """``POST /v2/repository/models/{name}/load``; see :meth:`Models.load`."""
        plan = plan_load(name, config)
        self._client._state.forget_model(name)
        return await self._client._call(plan, options, parse_nothing)

    async def unload(self, name: str, **options: Unpack[CallOptions]) -> None:
        """``POST /v2/repository/models/{name}/unload``; see :meth:`Models.load`."""
        plan = plan_unload(name)
        self._client._state.forget_model(name)
        return await self._client._call(plan, options, parse_nothing)


class ServerWithRawResponse:
    def __init__(self, server: Server) -> None:
        self.live = to_raw_response_wrapper(server.live)
        self.ready = to_raw_response_wrapper(server.ready)
        self.metadata = to_raw_response_wrapper(server.metadata)


class ModelsWithRawResponse:
    def __init__(self, models: Models) -> None:
        self.list = to_raw_response_wrapper(models.list)
        self.get = to_raw_response_wrapper(models.get)
        self.ready = to_raw_response_wrapper(models.ready)
        self.config = to_raw_response_wrapper(models.config)
        self.stats = to_raw_response_wrapper(models.stats)
        self.load = to_raw_response_wrapper(models.load)
        self.unload = to_raw_response_wrapper(models.unload)


class ClientWithRawResponse:
    """``client.with_raw_response``: every call returns a :class:`~maas_client.RawResponse`."""

    def __init__(self, client: Client) -> None:
        self.infer = to_raw_response_wrapper(client.infer)
        self.server = ServerWithRawResponse(client.server)
        self.models = ModelsWithRawResponse(client.models)


class AsyncServerWithRawResponse:
    def __init__(self, server: AsyncServer) -> None:
        self.live = async_to_raw_response_wrapper(server.live)
        self.ready = async_to_raw_response_wrapper(server.ready)
        self.metadata = async_to_raw_response_wrapper(server.metadata)


class AsyncModelsWithRawResponse:
    def __init__(self, models: AsyncModels) -> None:
        self.list = async_to_raw_response_wrapper(models.list)
        self.get = async_to_raw_response_wrapper(models.get)
        self.ready = async_to_raw_response_wrapper(models.ready)
        self.config = async_to_raw_response_wrapper(models.config)
        self.stats = async_to_raw_response_wrapper(models.stats)
        self.load = async_to_raw_response_wrapper(models.load)
        self.unload = async_to_raw_response_wrapper(models.unload)


class AsyncClientWithRawResponse:
    """``client.with_raw_response`` of an :class:`~maas_client.AsyncClient`."""

    def __init__(self, client: AsyncClient) -> None:
        self.infer = async_to_raw_response_wrapper(client.infer)
        self.server = AsyncServerWithRawResponse(client.server)
        self.models = AsyncModelsWithRawResponse(client.models)
