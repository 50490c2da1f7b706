"""The protocol's messages as the client hands them out (the models live in :mod:`maas_wire.types`).

Every name is the wire model itself, except :class:`ModelMetadata`, :class:`DatasetInfo` and
:class:`DatasetPreview`, which add the notebook and console display that the wire layer knows
nothing of.
"""

from __future__ import annotations

from maas_wire import datasets as _datasets
from maas_wire import types as _wire
from maas_wire.datasets import DatasetField, DatasetList
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

from ._display import (
    dataset_info_html,
    dataset_info_repr,
    model_metadata_html,
    model_metadata_repr,
)

__all__ = [
    "DatasetField",
    "DatasetInfo",
    "DatasetList",
    "DatasetPreview",
    "ErrorResponse",
    "FailedPublish",
    "InferenceRequest",
    "InferenceResponse",
    "InferenceStatistics",
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


class DatasetInfo(_datasets.DatasetInfo):
    """One version of a dataset (``client.datasets.upload``), shown as a table in notebooks."""

    def __repr__(self) -> str:
        return dataset_info_repr(self)

    def _repr_html_(self) -> str:
        return dataset_info_html(self)


class DatasetPreview(_datasets.DatasetPreview):
    """A dataset version with its versions and first rows (``client.datasets.get``), shown as
    tables in notebooks."""

    def __repr__(self) -> str:
        return dataset_info_repr(self)

    def _repr_html_(self) -> str:
        return dataset_info_html(self)
