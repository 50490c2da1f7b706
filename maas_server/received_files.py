"""Uploads received to disk: the body streamed into a staged file in batches, hashed as it
arrives, with the file work on worker threads that run to their end.

Used by model publishing (:mod:`maas_server.publish`) and by datasets
(:mod:`maas_server.datasets`); both stage a file, then check it and rename it into place.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from .errors import PayloadTooLargeError

__all__ = ["BATCH_BYTES", "Received", "Writer", "receive", "to_end", "write_all"]

T = TypeVar("T")

BATCH_BYTES = 1024 * 1024
"""Received chunks are gathered up to this many bytes before one write on a worker thread."""

Writer = Callable[[IO[bytes], bytes], None]
"""Writes bytes to an open file (tests inject one that fails with ENOSPC)."""


def write_all(out: IO[bytes], data: bytes) -> None:
    out.write(data)


async def to_end(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function`` in a worker thread, waited for to its end even when the request is
    cancelled (its deadline): it owns staged files and sessions that must not be removed or
    left behind under it."""
    work = asyncio.ensure_future(asyncio.to_thread(function, *args, **kwargs))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        raise


@dataclass(frozen=True)
class Received:
    """What :func:`receive` wrote: its size, its sha256 and its first bytes."""

    size: int
    sha256: str
    head: bytes


async def receive(
    chunks: AsyncIterator[bytes],
    path: Path,
    *,
    limit: int,
    too_large: str,
    write: Writer = write_all,
    head_bytes: int = 0,
) -> Received:
    """Write ``chunks`` to the new file ``path`` (batched writes on worker threads), hashing
    them; :class:`PayloadTooLargeError` with ``too_large`` once more than ``limit`` bytes came.
    OSErrors (a full disk) propagate for the caller to answer."""
    digest = hashlib.sha256()
    size = 0
    head = b""
    pending: list[bytes] = []
    pending_size = 0
    with path.open("xb") as out:

        def flush(parts: list[bytes]) -> None:
            data = b"".join(parts)
            digest.update(data)
            write(out, data)

        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(too_large)
            if len(head) < head_bytes:
                head += chunk[: head_bytes - len(head)]
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= BATCH_BYTES:
                await to_end(flush, pending)
                pending, pending_size = [], 0
        if pending:
            await to_end(flush, pending)
        await to_end(out.flush)
    return Received(size, digest.hexdigest(), head)
