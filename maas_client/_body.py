"""Bodies: a binary request body sent from the tensors' own memory, and an answer's body
collected into one writable buffer. No I/O here: the pipeline feeds and drains them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, cast

import httpx
import numpy as np

from maas_wire.protocol import BinaryPiece

__all__ = [
    "CHUNK",
    "MAX_PREALLOCATION",
    "SMALL_BODY",
    "BodyBuffer",
    "BodyStream",
    "identity_coded",
    "known_length",
]

SMALL_BODY = 64 * 1024
"""Bodies up to this size are joined into one ``bytes``; larger ones stream from the tensors."""
CHUNK = 1 << 20
MAX_PREALLOCATION = 64 << 20
"""The most bytes reserved up front from an announced ``Content-Length``; a longer body grows
its buffer as its bytes actually arrive."""


class BodyStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A binary request body sent from the tensors' own memory, in chunks of at most 1 MiB.

    Nothing is copied here. The lean transport hands each chunk to the socket as it is; httpx's
    own transport (h11) copies each chunk once on its way there. Non-contiguous arrays are made
    contiguous first (their one copy).
    """

    def __init__(self, header: bytes, pieces: Sequence[BinaryPiece]) -> None:
        chunks: list[bytes | memoryview] = [header]
        for piece in pieces:
            if isinstance(piece, bytes):
                if piece:
                    chunks.append(piece)
                continue
            if piece.size == 0:
                continue
            array = piece if piece.flags.c_contiguous else np.ascontiguousarray(piece)
            view = memoryview(array.reshape(-1).view(np.uint8).data)
            for start in range(0, len(view), CHUNK):
                chunks.append(view[start : start + CHUNK])
        self.chunks = chunks
        self.length = sum(len(c) for c in chunks)

    def __iter__(self) -> Iterator[bytes]:
        return iter(cast("list[bytes]", self.chunks))

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield cast(bytes, chunk)


def known_length(response: httpx.Response) -> int | None:
    length = response.headers.get("content-length")
    if length is None or not length.isascii() or not length.isdigit() or len(length) > 18:
        return None
    return int(length)


def identity_coded(response: httpx.Response) -> bool:
    coding = response.headers.get("content-encoding")
    return coding is None or coding.strip().lower() in ("", "identity")


class BodyBuffer:
    """Collects a response body into one writable buffer.

    A body that arrives as one ``bytearray`` of the announced length (the lean transport reads
    it so) is taken as it is; otherwise the chunks are copied once into a buffer of that length
    (at most :data:`MAX_PREALLOCATION` reserved before the bytes arrive).
    """

    __slots__ = ("_buffer", "_length", "_position", "_whole")

    def __init__(self, length: int | None) -> None:
        self._length = length
        self._whole: bytearray | None = None
        self._buffer: bytearray | None = None
        self._position = 0

    def add(self, chunk: Any) -> None:
        if self._whole is None and self._buffer is None:
            if isinstance(chunk, bytearray) and len(chunk) == self._length:
                self._whole = chunk
                return
            self._buffer = bytearray(min(self._length or 0, MAX_PREALLOCATION))
        elif self._whole is not None:
            self._buffer, self._whole = self._whole, None
            self._position = len(self._buffer)
        assert self._buffer is not None
        end = self._position + len(chunk)
        if end <= len(self._buffer):
            self._buffer[self._position : end] = chunk
        else:
            del self._buffer[self._position :]
            self._buffer += chunk
        self._position = end

    def result(self) -> bytearray:
        if self._whole is not None:
            return self._whole
        if self._buffer is None:
            return bytearray()
        del self._buffer[self._position :]
        return self._buffer
