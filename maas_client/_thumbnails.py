"""Small images for the notebook display: a ``data:`` URI per input image.

With Pillow, any image (a path, encoded bytes, a PIL image, an array of pixels) becomes a PNG at
most ``size`` pixels on its longer side. Without it, encoded bytes the browser can show (PNG,
JPEG, GIF, WebP) are embedded as they are when they are small, and scaled by the page.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from ._task_inputs import is_pil_image

__all__ = ["THUMBNAIL_PIXELS", "thumbnail_uri"]

THUMBNAIL_PIXELS = 96
_RAW_LIMIT = 256 * 1024
"""Bytes of an image embedded as it is when Pillow is missing."""


def _mime(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _encoded(source: Any) -> bytes | None:
    if isinstance(source, (str, os.PathLike)):
        try:
            return Path(source).read_bytes()
        except OSError:
            return None
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    return None


def _pillow_thumbnail(source: Any, data: bytes | None, size: int) -> bytes | None:
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        if is_pil_image(source):
            image = source.copy()
        elif isinstance(source, np.ndarray):
            array = source
            if array.dtype != np.uint8:
                scale = 255.0 if array.dtype.kind == "f" else 1.0
                array = np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)
            image = Image.fromarray(
                array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array
            )
        elif data is not None:
            image = Image.open(io.BytesIO(data))
            image.draft("RGB", (size, size))  # JPEG: decode at a fraction of the size
        else:
            return None
        if image.mode not in ("RGB", "RGBA", "L", "LA"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    except Exception:  # a picture that does not decode shows as its name
        return None


def thumbnail_uri(source: Any, size: int = THUMBNAIL_PIXELS) -> str | None:
    """A ``data:`` URI of ``source`` shrunk to ``size`` pixels, or ``None`` when it cannot be
    shown (not an image, unreadable, or too large to embed without Pillow)."""
    data = _encoded(source)
    small = _pillow_thumbnail(source, data, size)
    if small is not None:
        return _uri(small, "image/png")
    if data is not None and len(data) <= _RAW_LIMIT:
        mime = _mime(data)
        if mime is not None:
            return _uri(data, mime)
    return None
