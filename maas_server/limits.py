"""Limits on what one request may ask of the server, beyond the body size (``read_body``, 413).

- :func:`header_refusal`: request headers larger than ``max_header_bytes`` get 431. The request
  deadline (504 when the answer has not started ``request_timeout_s`` after the request arrived)
  is kept by :class:`~maas_server.guard.RequestGuard`; a started stream is ended at the deadline
  by :class:`~maas_server.sse.StreamDeadline`.
- :func:`check_tensor_limits`: input tensors with more than ``max_elements`` elements, or BYTES
  elements longer than ``max_element_bytes``, get 413 before anything is queued or run (binary
  tensors are also checked from the request's header before they are decoded, see
  :meth:`~maas_server.dataplane.DataPlane.check_inputs`; fixed-size ones are views of the body).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .asgi import Refusal, Scope
from .errors import PayloadTooLargeError

__all__ = ["check_tensor_limits", "header_refusal"]


def header_refusal(scope: Scope, max_header_bytes: int) -> Refusal | None:
    """431 when the request's headers take more than ``max_header_bytes`` (0: no limit)."""
    if not max_header_bytes:
        return None
    size = 0
    for key, value in scope["headers"]:
        size += len(key) + len(value) + 4
    if size <= max_header_bytes:
        return None
    return Refusal(
        431,
        f"request headers of {size} bytes exceed the server's limit of {max_header_bytes} bytes",
    )


def check_tensor_limits(
    tensors: Mapping[str, np.ndarray[Any, Any]], max_elements: int, max_element_bytes: int
) -> None:
    """413 when an input tensor is over the element or BYTES element size limit (0: no limit)."""
    for name, array in tensors.items():
        if max_elements and array.size > max_elements:
            raise PayloadTooLargeError(
                f"input {name!r} has {array.size} elements; the server's limit is {max_elements}"
            )
        if max_element_bytes and array.dtype == object and array.size:
            longest = max(len(element) for element in array.flat)
            if longest > max_element_bytes:
                raise PayloadTooLargeError(
                    f"input {name!r} has a BYTES element of {longest} bytes; the server's limit "
                    f"is {max_element_bytes}"
                )
