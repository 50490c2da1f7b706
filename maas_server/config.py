"""A model's configuration: ``<repository>/<model>/config.json`` (or ``config.yaml``).

Every key is optional; what is not configured is derived from the ONNX graph. Unknown keys are
refused, so that a typo is a load error with its reason rather than a silently ignored setting.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from .pipeline_config import PIPELINE_TASKS, PipelineSteps, default_steps

__all__ = [
    "CONFIG_FILES",
    "PROVIDER_OPTIONS",
    "ConfigError",
    "DynamicBatching",
    "ExecutionProvider",
    "GenerationConfig",
    "ModelConfig",
    "QueuePolicy",
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


_MAX_THREADS = 256
_MAX_BYTES = 1 << 50


@dataclass(frozen=True)
class _Option:
    """A provider option maas passes on: ``kind`` ``int`` (from ``low`` to ``high``), ``bool``
    or ``choice`` (one of ``choices``)."""

    kind: Literal["int", "bool", "choice"]
    low: int = 0
    high: int = 0
    choices: tuple[str, ...] = ()

    def check(self, value: Any) -> Any:
        """The value to pass on, or ValueError saying what is expected."""
        if self.kind == "int":
            number = value
            if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 20:
                number = int(value)
            if (
                isinstance(number, int)
                and not isinstance(number, bool)
                and self.low <= number <= self.high
            ):
                return number
            raise ValueError(f"an integer from {self.low} to {self.high}")
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            if value in (0, 1, "0", "1", "true", "false", "True", "False"):
                return str(value).lower() in ("1", "true")
            raise ValueError("true or false")
        if isinstance(value, str) and value in self.choices:
            return value
        raise ValueError("one of " + ", ".join(repr(c) for c in self.choices))


_THREADS = _Option("int", 0, _MAX_THREADS)
_DEVICE = _Option("int", 0, 255)
_MEMORY = _Option("int", 1, _MAX_BYTES)
_FLAG = _Option("bool")
_ARENA = _Option("choice", choices=("kNextPowerOfTwo", "kSameAsRequested"))
PROVIDER_OPTIONS: dict[str, dict[str, _Option]] = {
    "CPUExecutionProvider": {"intra_op_num_threads": _THREADS, "inter_op_num_threads": _THREADS},
    "CUDAExecutionProvider": {
        "device_id": _DEVICE,
        "gpu_mem_limit": _MEMORY,
        "arena_extend_strategy": _ARENA,
        "cudnn_conv_algo_search": _Option("choice", choices=("EXHAUSTIVE", "HEURISTIC", "DEFAULT")),
        "do_copy_in_default_stream": _FLAG,
        "cudnn_conv_use_max_workspace": _FLAG,
        "cudnn_conv1d_pad_to_nc1d": _FLAG,
        "enable_cuda_graph": _FLAG,
        "use_tf32": _FLAG,
        "prefer_nhwc": _FLAG,
        "tunable_op_enable": _FLAG,
        "tunable_op_tuning_enable": _FLAG,
    },
    "TensorrtExecutionProvider": {
        "device_id": _DEVICE,
        "trt_max_workspace_size": _MEMORY,
        "trt_fp16_enable": _FLAG,
        "trt_int8_enable": _FLAG,
        "trt_builder_optimization_level": _Option("int", 0, 5),
        "trt_max_partition_iterations": _Option("int", 1, 100_000),
        "trt_min_subgraph_size": _Option("int", 1, 100_000),
    },
    "ROCMExecutionProvider": {
        "device_id": _DEVICE,
        "gpu_mem_limit": _MEMORY,
        "arena_extend_strategy": _ARENA,
    },
    "DmlExecutionProvider": {"device_id": _DEVICE},
}
"""The execution provider options a configuration may set, with their types and ranges.
Others (and every option of a provider not listed) are refused: options that name files or
libraries (TensorRT's cache paths, custom op libraries) are not for a configuration that an
admin request can send."""

_PROVIDER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}ExecutionProvider$")


class ExecutionProvider(_Strict):
    """An ONNX Runtime execution provider and its options, e.g.

    ``{"name": "CUDAExecutionProvider", "options": {"device_id": 0, "gpu_mem_limit": 2147483648,
    "arena_extend_strategy": "kSameAsRequested"}}``. For ``CPUExecutionProvider`` the options
    ``intra_op_num_threads`` and ``inter_op_num_threads`` (0 to 256) set the session's thread
    pools. Only the options of :data:`PROVIDER_OPTIONS` are accepted, each with its type and
    range checked.
    """

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_form(cls, name: str) -> str:
        if not _PROVIDER_NAME.match(name):
            raise ValueError(
                f"{name!r} is not an execution provider name (like CPUExecutionProvider)"
            )
        return name

    @model_validator(mode="after")
    def _known_options(self) -> ExecutionProvider:
        allowed = PROVIDER_OPTIONS.get(self.name, {})
        checked: dict[str, Any] = {}
        for key, value in self.options.items():
            option = allowed.get(key)
            if option is None:
                known = ", ".join(sorted(allowed)) or "none"
                raise ValueError(f"unknown option {key!r} of {self.name} (known options: {known})")
            try:
                checked[key] = option.check(value)
            except ValueError as exc:
                shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
                raise ValueError(
                    f"option {key!r} of {self.name} must be {exc}, not {shown}"
                ) from None
        self.options = checked
        return self


def _provider_kind(value: Any) -> str:
    return "name" if isinstance(value, str) else "provider"


ProviderEntry = Annotated[
    Annotated[ExecutionProvider, Tag("provider")]
    | Annotated[str, StringConstraints(pattern=_PROVIDER_NAME.pattern), Tag("name")],
    Discriminator(_provider_kind),
]


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


class QueuePolicy(_Strict):
    """How long a request may wait in a queue, and what happens when the wait runs out
    (Triton's ``ModelQueuePolicy``)."""

    timeout_action: Literal["REJECT", "DELAY"] = "REJECT"
    default_timeout_microseconds: int = Field(default=0, ge=0)
    allow_timeout_override: bool = False
    max_queue_size: int = Field(default=0, ge=0)

    def timeout_us(self, requested: int | None) -> int:
        """The timeout that applies to a request asking for ``requested`` microseconds: a request
        may shorten the default (or set one where there is none) only when overrides are allowed."""
        default = self.default_timeout_microseconds
        if requested is None or not self.allow_timeout_override or requested <= 0:
            return default
        return requested if default == 0 else min(requested, default)


class DynamicBatching(_Strict):
    """The dynamic batcher (Triton's names and meanings), plus ``queue_order``.

    Priority 1 is the highest; requests that name no priority get ``default_priority_level``
    (the lowest level when unset). ``queue_order="shortest_first"`` serves the smallest request
    of a priority level first; a request that has waited ``aging_microseconds`` is served in
    arrival order again, so that none starves. ``reserved_instances`` instances run only
    requests of priority level 1, so that those never wait behind a lower-priority batch.
    """

    max_queue_delay_microseconds: int = Field(default=0, ge=0)
    preferred_batch_size: list[int] = Field(default_factory=list)
    preserve_ordering: bool = False
    priority_levels: int = Field(default=0, ge=0, le=1000)
    default_priority_level: int = Field(default=0, ge=0)
    default_queue_policy: QueuePolicy = Field(default_factory=QueuePolicy)
    priority_queue_policy: dict[int, QueuePolicy] = Field(default_factory=dict)
    queue_order: Literal["fifo", "shortest_first"] = "fifo"
    aging_microseconds: int = Field(default=100_000, ge=0)
    reserved_instances: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _levels(self) -> DynamicBatching:
        if self.priority_levels:
            if not 1 <= self.default_priority_level <= self.priority_levels:
                if self.default_priority_level != 0:
                    raise ValueError("default_priority_level must lie in 1..priority_levels")
                self.default_priority_level = self.priority_levels
        elif self.default_priority_level:
            raise ValueError("default_priority_level needs priority_levels")
        bad = [k for k in self.priority_queue_policy if not 1 <= k <= self.priority_levels]
        if bad:
            raise ValueError(f"priority_queue_policy names levels {bad} outside 1..priority_levels")
        if self.reserved_instances and self.priority_levels < 2:
            raise ValueError("reserved_instances needs priority_levels of 2 or more")
        if any(size < 1 for size in self.preferred_batch_size):
            raise ValueError("preferred_batch_size entries are positive")
        return self

    def policy(self, level: int) -> QueuePolicy:
        return self.priority_queue_policy.get(level, self.default_queue_policy)


class GenerationConfig(_Strict):
    """Defaults and limits of a ``"task": "text-generation"`` model (requests may override the
    defaults), e.g. ``{"max_tokens": 32, "temperature": 0.0, "eos_token_id": 0}``.

    ``eos_token_id`` (one id or several) defaults to the tokenizer configuration's ``eos_token``;
    ``context_length`` caps prompt plus generated tokens (the model's position limit);
    ``max_batch_size`` caps the sequences stepped together; ``stream_interval_ms`` is the least
    time between two hand-overs of one sequence's new tokens to the HTTP side (tokens that come
    faster are sent a few at a time, each still its own event); ``io_binding`` keeps the KV cache
    in the execution provider's memory between steps (default: on when a GPU provider runs).
    Load caps: ``max_tokens_limit`` is the most tokens a request may ask for (400 above it),
    ``max_request_sequences`` the most sequences one request may start (prompts x ``n``; 400),
    ``max_waiting_sequences`` the most sequences waiting for room in the batch (503 above it).
    """

    max_tokens: int = Field(default=16, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)
    top_k: int = Field(default=0, ge=0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: list[str] = Field(default_factory=list)
    eos_token_id: int | list[int] | None = None
    bos_token_id: int | None = None
    context_length: int | None = Field(default=None, ge=2)
    max_batch_size: int = Field(default=16, ge=1, le=1024)
    stream_interval_ms: float = Field(default=1.0, ge=0.0, le=1000.0)
    io_binding: bool | None = None
    max_tokens_limit: int = Field(default=4096, ge=1)
    max_request_sequences: int = Field(default=64, ge=1)
    max_waiting_sequences: int = Field(default=256, ge=1)
    tokenizer: str = "tokenizer.json"
    tokenizer_config: str = "tokenizer_config.json"

    @field_validator("tokenizer", "tokenizer_config")
    @classmethod
    def _file_inside(cls, filename: str) -> str:
        path = Path(filename)
        if path.is_absolute() or ".." in path.parts or "\x00" in filename:
            raise ValueError("names a file inside the model's folder")
        return filename

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: list[str]) -> list[str]:
        if any(not s for s in stop):
            raise ValueError("stop strings are not empty")
        return stop


class ModelConfig(_Strict):
    """The configuration of one model (all of its versions)."""

    max_batch_size: int = Field(default=0, ge=0)
    instance_count: int = Field(default=1, ge=1, le=64)
    execution_providers: list[ProviderEntry] | None = None
    graph_optimization_level: GraphOptimizationLevel = "all"
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    warmup: int = Field(default=0, ge=0, le=1000)
    labels: str | list[str] | None = None
    inputs: list[TensorOverride] = Field(default_factory=list)
    outputs: list[TensorOverride] = Field(default_factory=list)
    require_gpu: bool = False
    dynamic_batching: DynamicBatching | None = None
    device_ids: list[Annotated[int, Field(ge=0, le=255)]] | None = Field(default=None, min_length=1)
    task: Literal[
        "inference", "text-generation", "embedding", "text-classification", "image-classification"
    ] = "inference"
    generation: GenerationConfig | None = None
    pipeline: PipelineSteps | None = None

    @model_validator(mode="after")
    def _generation_task(self) -> ModelConfig:
        if self.generation is not None and self.task != "text-generation":
            raise ValueError("the 'generation' settings are for task 'text-generation'")
        return self

    @model_validator(mode="after")
    def _pipeline_task(self) -> ModelConfig:
        if self.pipeline is not None and self.task not in PIPELINE_TASKS:
            raise ValueError(
                "'pipeline' steps are for tasks " + ", ".join(repr(t) for t in PIPELINE_TASKS)
            )
        if self.task in PIPELINE_TASKS:
            default_steps(self.task, self.pipeline)  # refuses text steps for images and so on
        return self

    def steps(self) -> PipelineSteps | None:
        """The pipeline's steps (the declared ones, the task's defaults for the rest), or None
        for a model without a pipeline task."""
        if self.task not in PIPELINE_TASKS:
            return None
        return default_steps(self.task, self.pipeline)

    @model_validator(mode="after")
    def _batch_sizes(self) -> ModelConfig:
        batching = self.dynamic_batching
        if batching and batching.reserved_instances >= self.instance_count:
            raise ValueError("reserved_instances must leave at least one of instance_count")
        if batching and any(s > self.max_batch_size for s in batching.preferred_batch_size):
            raise ValueError("preferred_batch_size entries cannot exceed max_batch_size")
        return self

    @field_validator("labels")
    @classmethod
    def _labels_inside(cls, labels: str | list[str] | None) -> str | list[str] | None:
        if isinstance(labels, str):
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
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"cannot read {path.name}: not UTF-8 text (byte {exc.start}: {exc.reason})"
            ) from None
        except OSError as exc:
            raise ConfigError(f"cannot read {path.name}: {exc.strerror}") from None
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
