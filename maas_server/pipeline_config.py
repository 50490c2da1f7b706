"""The declared steps of a pipeline model: what a configuration's ``"pipeline"`` key may say,
and the defaults each ``"task"`` brings.

A model whose configuration says ``"task": "embedding"``, ``"text-classification"`` or
``"image-classification"`` takes text or encoded images (BYTES) and answers embeddings or labels
and scores. ``"pipeline"`` overrides the task's default steps::

    {"task": "embedding",
     "pipeline": {"text": {"max_length": 256},
                  "outputs": {"pooling": "mean", "normalize": "l2"}}}

Unknown keys are refused, like everywhere in a configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "PIPELINE_TASKS",
    "ImageSteps",
    "OutputSteps",
    "PipelineSteps",
    "PipelineTask",
    "TextSteps",
    "default_steps",
]

PipelineTask = Literal["embedding", "text-classification", "image-classification"]
PIPELINE_TASKS: tuple[str, ...] = ("embedding", "text-classification", "image-classification")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def _file_inside(filename: str) -> str:
    path = Path(filename)
    if path.is_absolute() or ".." in path.parts or "\x00" in filename or not filename:
        raise ValueError("names a file inside the model's folder")
    return filename


class TextSteps(_Strict):
    """Text to token ids: ``tokenizer`` (a ``tokenizers`` JSON file in the version folder, else
    the model's folder), ``max_length`` tokens per text (longer texts are cut when
    ``truncation``, else refused with a 400), ``padding`` to the batch's ``"longest"`` text or
    to a fixed length, and the names of the model's inputs that take the ids, the attention
    mask and the token types (``null``: the model has no such input). ``merge``: requests
    batched together are merged ``"before"`` tokenization (one tokenizer call per batch, the
    default: measured faster) or ``"after"`` (each request tokenized on arrival)."""

    tokenizer: str = "tokenizer.json"
    max_length: int = Field(default=512, ge=1, le=1_000_000)
    truncation: bool = True
    padding: Literal["longest"] | int = "longest"
    add_special_tokens: bool = True
    input_ids: str = "input_ids"
    attention_mask: str | None = "attention_mask"
    token_type_ids: str | None = "token_type_ids"
    merge: Literal["before", "after"] = "before"

    _inside = field_validator("tokenizer")(_file_inside)

    @field_validator("padding")
    @classmethod
    def _positive(cls, padding: str | int) -> str | int:
        if isinstance(padding, int) and padding < 1:
            raise ValueError("a fixed padding length is positive")
        return padding

    @model_validator(mode="after")
    def _fits(self) -> TextSteps:
        if isinstance(self.padding, int) and self.padding < self.max_length and self.truncation:
            self.max_length = self.padding
        return self


Resample = Literal["nearest", "bilinear", "bicubic", "lanczos"]


class ImageSteps(_Strict):
    """Encoded image (JPEG, PNG, WebP, ...) to a tensor, in this order: ``mode`` (``RGB``,
    ``BGR`` or ``L``), ``resize`` (an int: the shorter side, keeping the aspect; ``[h, w]``:
    exactly, or with ``resize_mode="pad"`` to height ``h`` keeping the aspect, at most ``w``
    wide, the rest of the width filled with 0 after normalisation), ``center_crop``
    (``[h, w]``), ``scale`` (pixel values times it), ``mean`` and ``std`` per channel
    (``(x * scale - mean) / std``), ``layout`` and ``datatype`` of the model's ``input``
    (default: its only input). ``max_pixels`` refuses larger images (413)."""

    input: str | None = None
    mode: Literal["RGB", "BGR", "L"] = "RGB"
    resize: int | list[int] | None = None
    resize_mode: Literal["stretch", "pad"] = "stretch"
    resample: Resample = "bilinear"
    center_crop: list[int] | None = None
    scale: float = 1 / 255
    mean: list[float] | None = None
    std: list[float] | None = None
    layout: Literal["NCHW", "NHWC"] | None = None
    datatype: Literal["FP32", "FP16", "FP64", "UINT8", "INT8"] | None = None
    max_pixels: int = Field(default=40_000_000, ge=1)

    @field_validator("resize")
    @classmethod
    def _size(cls, resize: int | list[int] | None) -> int | list[int] | None:
        if isinstance(resize, int) and resize < 1:
            raise ValueError("the shorter side is a positive number of pixels")
        if isinstance(resize, list) and (len(resize) != 2 or min(resize) < 1):
            raise ValueError("[height, width], both positive")
        return resize

    @field_validator("center_crop")
    @classmethod
    def _crop(cls, crop: list[int] | None) -> list[int] | None:
        if crop is not None and (len(crop) != 2 or min(crop) < 1):
            raise ValueError("[height, width], both positive")
        return crop

    @field_validator("std")
    @classmethod
    def _nonzero(cls, std: list[float] | None) -> list[float] | None:
        if std is not None and any(s == 0 for s in std):
            raise ValueError("no standard deviation may be 0")
        return std

    @model_validator(mode="after")
    def _channels(self) -> ImageSteps:
        channels = 1 if self.mode == "L" else 3
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and len(values) not in (1, channels):
                raise ValueError(f"{key} has {len(values)} values; mode {self.mode} has {channels}")
        if self.resize_mode == "pad" and not isinstance(self.resize, list):
            raise ValueError("resize_mode 'pad' needs resize [height, width]")
        return self


class OutputSteps(_Strict):
    """Model outputs to answers. Embeddings: ``pooling`` of the ``output`` (default: the
    model's first) over the tokens (``mean`` and ``max`` use the attention mask, ``cls`` takes
    the first token, ``none`` takes the output as it is), then ``normalize``; ``matryoshka``
    allows a request to ask for fewer ``dimensions`` (the first ones, normalised again).
    Classification: ``activation`` (``softmax``, ``sigmoid`` or ``none``) of the output, then
    the top ``top_k`` (default 5; a request may ask for another) with their labels."""

    output: str | None = None
    pooling: Literal["mean", "cls", "max", "none"] = "mean"
    normalize: Literal["l2", "none"] = "l2"
    matryoshka: bool = False
    activation: Literal["softmax", "sigmoid", "none"] = "softmax"
    top_k: int = Field(default=5, ge=1)


class PipelineSteps(_Strict):
    """The ``"pipeline"`` key of a configuration: any of ``text``, ``image`` and ``outputs``."""

    text: TextSteps | None = None
    image: ImageSteps | None = None
    outputs: OutputSteps | None = None


def default_steps(task: str, declared: PipelineSteps | None) -> PipelineSteps:
    """The steps of ``task``: the declared ones, the task's defaults for the rest."""
    declared = declared or PipelineSteps()
    if task == "image-classification":
        if declared.text is not None:
            raise ValueError("an image-classification pipeline has no 'text' steps")
        return PipelineSteps(
            image=declared.image or ImageSteps(), outputs=declared.outputs or OutputSteps()
        )
    if declared.image is not None:
        raise ValueError(f"a {task} pipeline has no 'image' steps")
    return PipelineSteps(
        text=declared.text or TextSteps(), outputs=declared.outputs or OutputSteps()
    )
