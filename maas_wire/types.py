"""Wire models of the Open Inference Protocol (KServe V2) and Triton's extensions.

These pydantic models are the one definition of the schema: the client parses server answers with
them and the server validates requests with them. Tensor ``data`` is typed ``Any`` on purpose:
tensors are converted by :mod:`maas_wire.codec`, never validated element by element here.

Answers from other V2 servers (Triton, MLServer, KServe) carry fields of their own; the models
that describe answers keep such fields (``extra="allow"``) instead of failing on them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
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

Parameters = dict[str, Any]


class _Answer(BaseModel):
    """Base of the models that describe what a server sends back."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())


class _Request(BaseModel):
    """Base of the models that describe what a client sends."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())


class ServerMetadata(_Answer):
    """``GET /v2``: who the server is and which protocol extensions it implements."""

    name: str
    version: str
    extensions: list[str] = Field(default_factory=list)


class TensorMetadata(_Answer):
    """One input or output of a model: ``-1`` marks a variable dimension, ``[]`` a scalar."""

    name: str
    datatype: str
    shape: list[int]
    parameters: Parameters | None = None


class ModelMetadata(_Answer):
    """``GET /v2/models/{name}[/versions/{version}]``."""

    name: str
    versions: list[str] | None = None
    platform: str = ""
    inputs: list[TensorMetadata] = Field(default_factory=list)
    outputs: list[TensorMetadata] = Field(default_factory=list)
    parameters: Parameters | None = None


class RequestInput(_Request):
    """One input tensor of an inference request.

    ``data`` holds the elements (row-major, flat or nested) for JSON; a tensor sent as binary has
    ``parameters["binary_data_size"]`` instead and no ``data``.
    """

    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: Any = None


class RequestOutput(_Request):
    """An output the request asks for; ``parameters["binary_data"]`` asks for it as binary."""

    name: str
    parameters: Parameters | None = None


class InferenceRequest(_Request):
    """``POST /v2/models/{name}[/versions/{version}]/infer``."""

    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(_Answer):
    """One output tensor of an inference response (``data`` absent when sent as binary)."""

    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: Any = None


class InferenceResponse(_Answer):
    """The answer to an inference request."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput] = Field(default_factory=list)


class ModelConfigTensor(_Answer):
    """One ``input`` or ``output`` of a model configuration (Triton's ``model_config``).

    ``dims`` leave out the batch dimension when the model batches (``max_batch_size > 0``).
    """

    name: str
    data_type: str = ""
    dims: list[int] = Field(default_factory=list)


class ModelConfiguration(_Answer):
    """``GET /v2/models/{name}[/versions/{version}]/config``: Triton's ``model_config`` fields.

    Servers add fields of their own (maas: ``execution_providers``, ``warmup``...); they are kept
    and readable as attributes or through ``model_extra``.
    """

    name: str = ""
    platform: str | None = None
    backend: str | None = None
    max_batch_size: int = 0
    input: list[ModelConfigTensor] = Field(default_factory=list)
    output: list[ModelConfigTensor] = Field(default_factory=list)


ModelState = Literal["READY", "UNAVAILABLE", "LOADING", "UNLOADING"]


class RepositoryModel(_Answer):
    """One row of ``POST /v2/repository/index``."""

    name: str
    version: str | None = None
    state: str | None = None
    reason: str | None = None


class RepositoryIndexRequest(_Request):
    """Body of ``POST /v2/repository/index``: ``ready=True`` lists only ready models."""

    ready: bool | None = None


class RepositoryModelLoadRequest(_Request):
    """Body of ``POST /v2/repository/models/{name}/load``.

    ``parameters["config"]`` may hold a JSON string that overrides the model's configuration.
    """

    parameters: Parameters | None = None


class ModelStatistics(_Answer):
    """One model version's counters in Triton's statistics extension.

    ``inference_stats`` holds ``{"success": {"count": n, "ns": total}, "fail": ..., "queue":
    ..., "compute_input": ..., "compute_infer": ..., "compute_output": ...}``; ``batch_stats``
    one entry per batch size run. Fields a server adds of its own are kept.
    """

    name: str
    version: str = ""
    last_inference: int = 0
    inference_count: int = 0
    execution_count: int = 0
    inference_stats: dict[str, Any] = Field(default_factory=dict)
    batch_stats: list[dict[str, Any]] = Field(default_factory=list)


class InferenceStatistics(_Answer):
    """``GET /v2/models[/{name}[/versions/{version}]]/stats``: one entry per model version."""

    model_stats: list[ModelStatistics] = Field(default_factory=list)


class ErrorResponse(_Answer):
    """The body of every non-2xx answer."""

    error: str


class ModelVersionInfo(_Answer):
    """One version in ``GET /v2/repository/models/{name}/versions`` (maas), and the answer of a
    publish (``PUT .../versions/{v}``, ``POST .../versions``): where it stands and where it
    came from."""

    name: str
    version: str
    state: str
    reason: str | None = None
    size: int | None = None
    sha256: str | None = None
    created: str | None = None
    """When it was published (ISO 8601, UTC)."""
    framework: str | None = None
    key_name: str | None = None
    """The name of the API key that published it."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    default: bool = False


class FailedPublish(_Answer):
    """A publish that did not happen (nothing of it was kept): when, why, by whom."""

    version: str | None = None
    created: str | None = None
    status: int | None = None
    reason: str | None = None
    key_name: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class ModelVersions(_Answer):
    """``GET /v2/repository/models/{name}/versions`` (maas): every version, the default one,
    the one unversioned requests reach now, and the failed attempts, newest first."""

    name: str
    default: str | None = None
    serving: str | None = None
    versions: list[ModelVersionInfo] = Field(default_factory=list)
    failed_attempts: list[FailedPublish] = Field(default_factory=list)
