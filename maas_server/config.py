"""A model's configuration: ``<repository>/<model>/config.json`` (or ``config.yaml``).

Every key is optional; what is not configured is derived from the ONNX graph. Unknown keys are
refused, so that a typo is a load error with its reason rather than a silently ignored setting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "CONFIG_FILES",
    "ConfigError",
    "ExecutionProvider",
    "ModelConfig",
    "TensorOverride",
    "VersionPolicy",
    "load_config",
    "parse_config",
]

CONFIG_FILES = ("config.json", "config.yaml", "config.yml")

GraphOptimizationLevel = Literal["disable", "basic", "extended", "all"]


class ConfigError(ValueError):
    """A configuration that cannot be used; the message says which key and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ExecutionProvider(_Strict):
    """An ONNX Runtime execution provider and its options, e.g.

    ``{"name": "CUDAExecutionProvider", "options": {"device_id": 0, "gpu_mem_limit": 2147483648,
    "arena_extend_strategy": "kSameAsRequested"}}``. For ``CPUExecutionProvider`` the options
    ``intra_op_num_threads`` and ``inter_op_num_threads`` set the session's thread pools.
    """

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class LatestPolicy(_Strict):
    num_versions: int = Field(default=1, ge=1)


class SpecificPolicy(_Strict):
    versions: list[int] = Field(min_length=1)


class VersionPolicy(_Strict):
    """Which versions to serve: ``{"latest": {"num_versions": N}}`` (default: the newest one),
    ``{"all": {}}`` or ``{"specific": {"versions": [1, 3]}}``."""

    latest: LatestPolicy | None = None
    all: dict[str, Any] | None = None
    specific: SpecificPolicy | None = None

    @model_validator(mode="after")
    def _one_policy(self) -> VersionPolicy:
        chosen = [p for p in (self.latest, self.all, self.specific) if p is not None]
        if len(chosen) > 1:
            raise ValueError("give only one of 'latest', 'all' and 'specific'")
        if not chosen:
            self.latest = LatestPolicy()
        return self

    def select(self, available: list[int]) -> list[int]:
        """The versions to load out of those present on disk, oldest first."""
        ordered = sorted(available)
        if self.all is not None:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in set(self.specific.versions)]
        assert self.latest is not None
        return ordered[-self.latest.num_versions :]


class TensorOverride(_Strict):
    """Overrides for one input or output: a fixed ``shape`` (``-1`` for variable dimensions,
    batch dimension included) where the graph leaves dimensions open."""

    name: str
    shape: list[int] | None = None

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: list[int] | None) -> list[int] | None:
        if shape is not None and any(d < -1 or d == 0 for d in shape):
            raise ValueError("dimensions are positive, or -1 for a variable one")
        return shape


class ModelConfig(_Strict):
    """The configuration of one model (all of its versions)."""

    max_batch_size: int = Field(default=0, ge=0)
    instance_count: int = Field(default=1, ge=1, le=64)
    execution_providers: list[ExecutionProvider | str] | None = None
    graph_optimization_level: GraphOptimizationLevel = "all"
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    warmup: int = Field(default=0, ge=0, le=1000)
    labels: str | None = None
    inputs: list[TensorOverride] = Field(default_factory=list)
    outputs: list[TensorOverride] = Field(default_factory=list)
    require_gpu: bool = False

    @field_validator("labels")
    @classmethod
    def _labels_inside(cls, labels: str | None) -> str | None:
        if labels is not None:
            path = Path(labels)
            if path.is_absolute() or ".." in path.parts or "\x00" in labels:
                raise ValueError("'labels' names a file inside the model's folder")
        return labels

    def providers(self) -> list[ExecutionProvider]:
        """The configured providers in preference order (strings become option-less entries)."""
        return [
            p if isinstance(p, ExecutionProvider) else ExecutionProvider(name=p)
            for p in self.execution_providers or []
        ]


def parse_config(data: Any, source: str) -> ModelConfig:
    """Validate configuration data, naming ``source`` and the offending key on failure."""
    if data is None:
        data = {}
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration in {source}: {problems}") from None


def load_config(model_dir: Path) -> ModelConfig:
    """Read the configuration file of a model folder; defaults when it has none."""
    for filename in CONFIG_FILES:
        path = model_dir / filename
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        try:
            if filename.endswith(".json"):
                data = json.loads(text) if text.strip() else {}
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as exc:
            raise ConfigError(f"cannot parse {path.name}: {exc}") from None
        return parse_config(data, path.name)
    return ModelConfig()
