"""What ``client.embed`` and ``client.classify`` take: texts, and images as paths, bytes, PIL
images or arrays of pixels.

A pipeline model (one whose configuration names a ``task``) takes one BYTES input: ``text``
(UTF-8) for embeddings and text classification, ``image`` (an encoded JPEG, PNG, WebP...) for
image classification. One value or any iterable of values is accepted; a ``str`` is a text for
a text model and a file's path for an image model. Images are read and encoded only when the
chunk that carries them is sent, so a million paths do not sit in memory at once. Pillow is
imported only to encode a PIL image or an array (as PNG).
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from ._exceptions import InputError

__all__ = [
    "IMAGE_INPUT",
    "TEXT_INPUT",
    "InputKind",
    "TaskInputs",
    "describe_source",
    "is_pil_image",
    "pil_module",
    "task_inputs",
    "text_list",
]

TEXT_INPUT: Final = "text"
IMAGE_INPUT: Final = "image"
InputKind = Literal["text", "image"]

PILLOW_MISSING = "this needs Pillow, which is not installed: pip install 'maas[images]'"


def pil_module() -> Any:
    """``PIL.Image``, or an ImportError that says what to install."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError(PILLOW_MISSING) from exc
    return Image


def is_pil_image(value: Any) -> bool:
    """Whether ``value`` is a PIL image (checked without importing Pillow: if it was never
    imported, nothing can be a PIL image)."""
    module = sys.modules.get("PIL.Image")
    return module is not None and isinstance(value, module.Image)


def _is_pixels(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind in "uifb" and value.ndim in (2, 3)


def _is_one(value: Any) -> bool:
    """A single input rather than a collection of them."""
    return (
        isinstance(value, (str, bytes, bytearray, memoryview, os.PathLike))
        or is_pil_image(value)
        or _is_pixels(value)
    )


def _as_list(values: Any, call: str) -> list[Any]:
    if _is_one(values):
        return [values]
    if isinstance(values, np.ndarray) and values.ndim != 1:
        raise InputError(
            f"{call}: an array of {values.ndim} dimensions {list(values.shape)} is neither one "
            "input nor a list of them; pass a list"
        )
    if not isinstance(values, Iterable):
        raise InputError(f"{call} takes a str or an iterable of them, not {type(values).__name__}")
    items = list(values)
    if not items:
        raise InputError(f"{call} needs at least one input, and got none")
    return items


def text_list(texts: Any, call: str = "embed") -> list[str | bytes]:
    """``texts`` (a str, or any iterable of str; UTF-8 bytes pass as they are) as a list."""
    if isinstance(texts, os.PathLike) or is_pil_image(texts):
        raise InputError(f"{call} takes texts, not a {type(texts).__name__}")
    items = _as_list(texts, call)
    for index, item in enumerate(items):
        if not isinstance(item, (str, bytes)):
            raise InputError(
                f"{call}: input {index} is a {type(item).__name__}; texts are str (or UTF-8 bytes)"
            )
    return items


def describe_source(source: Any, kind: str = TEXT_INPUT, width: int = 60) -> str:
    """How an input shows in a result: the text, the file's name or what the image is."""
    if isinstance(source, str) and kind == IMAGE_INPUT:
        return Path(source).name or source
    if isinstance(source, str):
        return source if len(source) <= width else source[: width - 1] + "…"
    if isinstance(source, os.PathLike):
        return Path(source).name or os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"{len(source)} bytes"
    if is_pil_image(source):
        return f"image {source.width}x{source.height}"
    if isinstance(source, np.ndarray):
        return f"array {list(source.shape)}"
    return type(source).__name__


_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})


def _png(image: Any) -> bytes:
    if image.mode not in _PNG_MODES:
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _pixels_png(index: int, array: np.ndarray[Any, Any]) -> bytes:
    if array.ndim == 3 and array.shape[2] not in (1, 3, 4):
        raise InputError(
            f"input {index}: an image array is [height, width] or [height, width, channels] "
            f"with 1, 3 or 4 channels, not {list(array.shape)}"
        )
    if array.dtype != np.uint8:
        if array.dtype.kind == "f" and array.size and (array.min() < 0 or array.max() > 1):
            raise InputError(
                f"input {index}: a float image array holds values from 0 to 1; convert it to "
                "uint8 (0 to 255) yourself"
            )
        scale = 255.0 if array.dtype.kind == "f" else 1.0
        array = np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return _png(pil_module().fromarray(array))


def _image_path(index: int, source: str | os.PathLike[str], model: str) -> Path:
    path = Path(source)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise InputError(
            f"input {index}: model {model!r} classifies images, so a str is read as an image "
            f"file's path, and {os.fspath(source)!r} {what}"
        )
    return path


@dataclass(frozen=True)
class TaskInputs:
    """The inputs of one call: ``kind`` names the model's input; ``sources`` are what the caller
    gave (texts, paths, bytes, PIL images, arrays), turned into wire values by :meth:`encode`."""

    kind: InputKind
    sources: list[Any]

    def __len__(self) -> int:
        return len(self.sources)

    def encode(self, start: int, stop: int) -> np.ndarray[Any, Any]:
        """Sources ``start:stop`` as the BYTES tensor of the model's input (a 1-D object array
        of str or bytes)."""
        values = np.empty(stop - start, dtype=object)
        for offset, index in enumerate(range(start, stop)):
            values[offset] = self._value(index, self.sources[index])
        return values

    def _value(self, index: int, source: Any) -> str | bytes:
        if self.kind == TEXT_INPUT:
            if not isinstance(source, (str, bytes)):
                raise InputError(f"input {index} is a {type(source).__name__}, not a text")
            return source
        if isinstance(source, (str, os.PathLike)):
            try:
                return Path(source).read_bytes()
            except OSError as exc:
                raise InputError(
                    f"input {index}: cannot read {os.fspath(source)!r}: {exc}"
                ) from None
        if isinstance(source, (bytes, bytearray, memoryview)):
            return bytes(source)
        if is_pil_image(source):
            return _png(source)
        if _is_pixels(source):
            return _pixels_png(index, source)
        raise InputError(
            f"input {index} is a {type(source).__name__}; an image is a file's path, the "
            "file's bytes, a PIL image or an array of pixels"
        )


def task_inputs(inputs: Any, kind: InputKind, model: str, call: str = "classify") -> TaskInputs:
    """``inputs`` (one or an iterable) for a model whose input is ``kind``, checked before
    anything is sent: texts are str or bytes, image paths name files that exist."""
    if kind == TEXT_INPUT:
        if isinstance(inputs, os.PathLike) or is_pil_image(inputs) or _is_pixels(inputs):
            raise InputError(
                f"model {model!r} classifies texts, not a {type(inputs).__name__}; "
                "read the text yourself and pass the str"
            )
        return TaskInputs(TEXT_INPUT, list(text_list(inputs, call)))
    items = _as_list(inputs, call)
    for index, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            _image_path(index, item, model)
        elif not (
            isinstance(item, (bytes, bytearray, memoryview))
            or is_pil_image(item)
            or _is_pixels(item)
        ):
            raise InputError(
                f"input {index} is a {type(item).__name__}; an image is a file's path, the "
                "file's bytes, a PIL image or an array of pixels"
            )
    return TaskInputs(IMAGE_INPUT, items)
