"""Encoded images to the tensor an image model takes: decode (JPEG, PNG, WebP and whatever else
Pillow reads; turned upright as their EXIF orientation says), colour mode, resize, center crop,
scale, mean and std, layout and datatype.

An image larger than ``max_pixels`` is refused before its pixels are decoded (413), an image
Pillow cannot read is a 400; both name the input and the element.

>>> steps = ImageSteps(resize=[224, 224], mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
>>> ImagePreprocessor(steps, "pixel_values", "FP32", (-1, 3, 224, 224)).batch("image", [jpeg])
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadRequestError, PayloadTooLargeError
from .pipeline_config import ImageSteps
from .runtime import ModelLoadError

__all__ = ["ImagePreprocessor"]

Array = np.ndarray[Any, Any]

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_DTYPES: dict[str, type[np.generic]] = {
    "FP32": np.float32,
    "FP16": np.float16,
    "FP64": np.float64,
    "UINT8": np.uint8,
    "INT8": np.int8,
}


class ImagePreprocessor:
    """The image steps of one model: ``batch(name, images)`` gives the model's input tensor."""

    def __init__(
        self, steps: ImageSteps, input_name: str, datatype: str, shape: Sequence[int]
    ) -> None:
        self.steps = steps
        self.input_name = input_name
        self.layout = steps.layout or _layout_of(shape)
        datatype = steps.datatype or datatype
        if datatype not in _DTYPES:
            raise ModelLoadError(
                f"input {input_name!r} takes {datatype}; image steps make " + ", ".join(_DTYPES)
            )
        self.dtype = _DTYPES[datatype]
        self.resize = steps.resize
        if self.resize is None and steps.center_crop is None:
            fixed = _fixed_size(shape, self.layout)
            if fixed is not None:
                self.resize = list(fixed)
        channels = 1 if steps.mode == "L" else 3
        self.mean = np.asarray(steps.mean or [0.0], dtype=np.float32)
        self.std = np.asarray(steps.std or [1.0], dtype=np.float32)
        if self.mean.size == 1:
            self.mean = np.repeat(self.mean, channels)
        if self.std.size == 1:
            self.std = np.repeat(self.std, channels)

    def decode(self, name: str, index: int, data: bytes) -> Image.Image:
        """One element's image, checked against the pixel limit before its pixels are read."""
        limit = self.steps.max_pixels
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
                width, height = image.size
                if width * height > limit:
                    raise PayloadTooLargeError(
                        f"input {name!r}: element {index} is a {width}x{height} image "
                        f"({width * height} pixels); the model takes at most {limit} pixels"
                    )
                image.load()
        except Image.DecompressionBombError as exc:
            raise PayloadTooLargeError(f"input {name!r}: element {index}: {exc}") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise BadRequestError(
                f"input {name!r}: element {index} is not an image that can be decoded ({exc})"
            ) from None
        return image

    def array(self, image: Image.Image) -> Array:
        """One decoded image as the model's [C, H, W] (or [H, W, C]) array."""
        steps = self.steps
        image = ImageOps.exif_transpose(image)  # a photo as its camera held it
        image = image.convert("L" if steps.mode == "L" else "RGB")
        resample = _RESAMPLE[steps.resample]
        pad_to = None
        if isinstance(self.resize, int):
            width, height = image.size
            short = min(width, height)
            size = (
                max(1, round(width * self.resize / short)),
                max(1, round(height * self.resize / short)),
            )
            image = image.resize(size, resample)
        elif isinstance(self.resize, list):
            height, width = self.resize
            if steps.resize_mode == "pad":
                ratio = image.size[0] / image.size[1]
                resized = min(width, max(1, math.ceil(height * ratio)))
                image = image.resize((resized, height), resample)
                pad_to = width
            else:
                image = image.resize((width, height), resample)
        if steps.center_crop is not None:
            crop_h, crop_w = steps.center_crop
            width, height = image.size
            if crop_h > height or crop_w > width:
                image = image.resize((max(width, crop_w), max(height, crop_h)), resample)
                width, height = image.size
            left = (width - crop_w) // 2
            top = (height - crop_h) // 2
            image = image.crop((left, top, left + crop_w, top + crop_h))
        pixels = np.asarray(image, dtype=np.float32)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if steps.mode == "BGR":
            pixels = pixels[:, :, ::-1]
        values = (pixels * np.float32(steps.scale) - self.mean) / self.std
        if pad_to is not None and values.shape[1] < pad_to:
            padded = np.zeros((values.shape[0], pad_to, values.shape[2]), dtype=np.float32)
            padded[:, : values.shape[1]] = values
            values = padded
        if self.layout == "NCHW":
            values = values.transpose(2, 0, 1)
        if self.dtype in (np.uint8, np.int8):
            info = np.iinfo(np.uint8 if self.dtype is np.uint8 else np.int8)
            values = np.clip(np.rint(values), info.min, info.max)
        return np.ascontiguousarray(values, dtype=self.dtype)

    def batch(self, name: str, images: Sequence[bytes]) -> Array:
        """The model's input for every image of one request (400 when their sizes differ)."""
        arrays = [self.array(self.decode(name, i, data)) for i, data in enumerate(images)]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise BadRequestError(
                f"input {name!r}: the images come out in different sizes "
                f"({', '.join(str(list(s)) for s in sorted(shapes))}); the model's steps need a "
                "resize to [height, width] or a center_crop to batch them"
            )
        return np.stack(arrays)


def _layout_of(shape: Sequence[int]) -> str:
    if len(shape) == 4 and shape[-1] in (1, 3) and shape[1] not in (1, 3):
        return "NHWC"
    return "NCHW"


def _fixed_size(shape: Sequence[int], layout: str) -> tuple[int, int] | None:
    if len(shape) != 4:
        return None
    height, width = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    if height > 0 and width > 0:
        return height, width
    return None
