"""The protocol's messages as the client hands them out (the models live in :mod:`maas_wire.types`).

Every name is the wire model itself, except :class:`ModelMetadata`, which adds the notebook and
console display that the wire layer knows nothing of.
"""

from __future__ import annotations

from maas_wire import types as _wire
from maas_wire.jobs import ChunkError, JobEvent, JobInfo, JobList, JobProgress, JobState
from maas_wire.types import (
    ErrorResponse,
    FailedPublish,
    InferenceRequest,
    InferenceResponse,
    InferenceStatistics,
    ModelConfigTensor,
    ModelConfiguration,
    ModelState,
    ModelStatistics,
    ModelVersionInfo,
    ModelVersions,
    RepositoryIndexRequest,
    RepositoryModel,
    RepositoryModelLoadRequest,
    RequestInput,
    RequestOutput,
    ResponseOutput,
    ServerMetadata,
    TensorMetadata,
)

from ._display import model_metadata_html, model_metadata_repr

__all__ = [
    "ChunkError",
    "ErrorResponse",
    "FailedPublish",
    "InferenceRequest",
    "InferenceResponse",
    "InferenceStatistics",
    "JobEvent",
    "JobInfo",
    "JobList",
    "JobProgress",
    "JobState",
    "ModelConfigTensor",
    "ModelConfiguration",
    "ModelMetadata",
    "ModelState",
    "ModelStatistics",
    "ModelVersionInfo",
    "ModelVersions",
    "RepositoryIndexRequest",
    "RepositoryModel",
    "RepositoryModelLoadRequest",
    "RequestInput",
    "RequestOutput",
    "ResponseOutput",
    "ServerMetadata",
    "TensorMetadata",
]


class ModelMetadata(_wire.ModelMetadata):
    """``GET /v2/models/{name}[/versions/{version}]``, shown as a table in notebooks."""

    def __repr__(self) -> str:
        return model_metadata_repr(self)

    def _repr_html_(self) -> str:
        return model_metadata_html(self)
