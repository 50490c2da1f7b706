# generated from maas_client/_async/_raw_calls.py by scripts/unasync.py; do not edit
"""A call made to return its :class:`~maas_client.RawResponse` (``client.with_raw_response``)."""

from __future__ import annotations

import functools
from typing import ParamSpec, TypeVar, cast

from .._response import Call, RawResponse, begin_raw_call, end_raw_call

__all__ = ["to_raw_response_wrapper"]

_T = TypeVar("_T")
_P = ParamSpec("_P")


def to_raw_response_wrapper(func: Call[_P, _T]) -> Call[_P, RawResponse[_T]]:
    """``func`` made to return its :class:`RawResponse`: it runs as the plain call does, and
    only its own request (not those made on the way) answers raw."""

    @functools.wraps(func)
    def wrapped(*args: _P.args, **kwargs: _P.kwargs) -> RawResponse[_T]:
        token = begin_raw_call()
        try:
            return cast("RawResponse[_T]", func(*args, **kwargs))
        finally:
            end_raw_call(token)

    return wrapped
