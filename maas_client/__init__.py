"""maas client: a typed Python client of the Open Inference Protocol (KServe V2 / Triton).

>>> from maas_client import Client
>>> with Client("http://127.0.0.1:8000") as client:  # doctest: +SKIP
...     result = client.infer("digits", x)
...     result["probabilities"]

:class:`AsyncClient` is the same with ``await``. The wire types live in :mod:`maas_client.types`
and the numpy codec in :mod:`maas_client.codec`; the server imports both.
"""

from __future__ import annotations

from ._async import AsyncClient, AsyncGenerationStream, AsyncJob, AsyncStream, AsyncTrainedModel
from ._batch_result import BatchError, BatchResult, ChunkFailure
from ._classifications import Classifications
from ._endpoints import Endpoints
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APIStreamError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    EndpointNotSupportedError,
    InputError,
    InternalServerError,
    MaasError,
    ModelNotFoundError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UnprocessableEntityError,
)
from ._generation import GenerateOptions, Generation, GenerationChunk
from ._inputs import Input, Output
from ._jobs import JobError
from ._response import RawResponse
from ._result import InferResult, RepositoryIndex, Timing
from ._retry import RetryEvent, RetryPolicy
from ._sync import Client, GenerationStream, Job, Stream, TrainedModel
from ._types import NOT_GIVEN, NotGiven

__all__ = [
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
]
