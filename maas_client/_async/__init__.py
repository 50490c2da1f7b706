"""The client's I/O, written once, asynchronous: ``scripts/unasync.py`` generates the blocking
twin in ``maas_client/_sync`` from these modules (do not edit that one)."""

from ._client import AsyncClient
from ._jobs import AsyncJob, AsyncJobs, AsyncJobTable
from ._streams import AsyncGenerationStream, AsyncStream
from ._training import AsyncTrainedModel

__all__ = [
    "AsyncClient",
    "AsyncGenerationStream",
    "AsyncJob",
    "AsyncJobTable",
    "AsyncJobs",
    "AsyncStream",
    "AsyncTrainedModel",
]
