"""``client.with_raw_response``: a mirror of the client's calls built from the classes
themselves, so a call added to a resource (or the client) has its raw variant at once.

Every public method of ``client.server`` and ``client.models``, and the client's own calls that
make one request (:data:`CLIENT_CALLS`), return a :class:`~maas_client.RawResponse` there.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["CLIENT_CALLS", "RawMirror", "public_methods"]

CLIENT_CALLS = ("infer", "generate")
"""The client's own calls that send one request and parse its answer; the others
(``infer_batched``, ``embed`` and ``classify``: many requests, ``train``: an upload, a job and
its wait, ``generate_stream``: a stream, and the client's lifetime)
have no single raw response."""

NESTED = ("server", "models")


def public_methods(cls: type) -> list[str]:
    """The public methods of a class, class methods and inherited ones included."""
    return sorted(
        name
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and (inspect.isfunction(member) or inspect.ismethod(member))
    )


class RawMirror:
    """``target``'s calls wrapped by ``wrap`` (``to_raw_response_wrapper`` or its async twin),
    and its resources mirrored the same way."""

    def __init__(
        self,
        target: Any,
        wrap: Callable[[Callable[..., Any]], Callable[..., Any]],
        names: tuple[str, ...] | None = None,
    ) -> None:
        for name in names if names is not None else public_methods(type(target)):
            setattr(self, name, wrap(getattr(target, name)))
        if names is not None:
            for name in NESTED:
                setattr(self, name, RawMirror(getattr(target, name), wrap))

    def __getattr__(self, name: str) -> Any:  # typing: the calls are set in __init__
        raise AttributeError(name)
