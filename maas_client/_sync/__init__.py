# generated from maas_client/_async/__init__.py by scripts/unasync.py; do not edit
"""The client's I/O, written once, asynchronous: ``scripts/unasync.py`` generates the blocking
twin in ``maas_client/_sync`` from these modules (do not edit that one)."""

from ._client import Client
from ._jobs import Job, Jobs, JobTable
from ._streams import GenerationStream, Stream
from ._training import TrainedModel

__all__ = [
    "Client",
    "GenerationStream",
    "Job",
    "JobTable",
    "Jobs",
    "Stream",
    "TrainedModel",
]
