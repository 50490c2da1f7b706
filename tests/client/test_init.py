"""The public surface: what ``maas_client`` exports, and that the private modules declare theirs."""

from __future__ import annotations

import importlib
import pkgutil

import maas_client

PUBLIC = {
    "NOT_GIVEN",
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APIStreamError",
    "APITimeoutError",
    "AsyncClient",
    "AsyncGenerationStream",
    "AsyncJob",
    "AsyncStream",
    "AsyncTrainedModel",
    "AuthenticationError",
    "BadRequestError",
    "BatchError",
    "BatchResult",
    "ChunkFailure",
    "Classifications",
    "Client",
    "ConflictError",
    "EndpointNotSupportedError",
    "Endpoints",
    "GenerateOptions",
    "Generation",
    "GenerationChunk",
    "GenerationStream",
    "InferResult",
    "Input",
    "InputError",
    "InternalServerError",
    "Job",
    "JobError",
    "MaasError",
    "ModelNotFoundError",
    "NotFoundError",
    "NotGiven",
    "Output",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "RawResponse",
    "RepositoryIndex",
    "RetryEvent",
    "RetryPolicy",
    "ServiceUnavailableError",
    "Stream",
    "Timing",
    "TrainedModel",
    "UnprocessableEntityError",
}


def test_public_names() -> None:
    assert set(maas_client.__all__) == PUBLIC
    assert sorted(maas_client.__all__) == sorted(set(maas_client.__all__))
    for name in maas_client.__all__:
        value = getattr(maas_client, name)
        module = getattr(value, "__module__", "maas_client._types")
        assert module.startswith("maas_client."), name


def test_every_module_declares_all() -> None:
    for info in pkgutil.iter_modules(maas_client.__path__):
        if info.ispkg:
            continue
        module = importlib.import_module(f"maas_client.{info.name}")
        assert isinstance(module.__all__, list), info.name
        for name in module.__all__:
            assert hasattr(module, name), f"{info.name}.{name}"


def test_not_given_is_a_falsy_singleton() -> None:
    assert maas_client.NotGiven() is maas_client.NOT_GIVEN
    assert not maas_client.NOT_GIVEN and repr(maas_client.NOT_GIVEN) == "NOT_GIVEN"
