"""A call made to return its :class:`~maas_client.RawResponse` (``client.with_raw_response``)."""

from __future__ import annotations

import functools
from typing import ParamSpec, TypeVar, cast

from .._response import AsyncCall, RawResponse, begin_raw_call, end_raw_call

__all__ = ["async_to_raw_response_wrapper"]

_T = TypeVar("_T")
_P = ParamSpec("_P")


def async_to_raw_response_wrapper(func: AsyncCall[_P, _T]) -> AsyncCall[_P, RawResponse[_T]]:
    """``func`` made to return its :class:`RawResponse`: it runs as the plain call does, and
    only its own request (not those made on the way) answers raw."""

    @functools.wraps(func)
    async def wrapped(*args: _P.args, **kwargs: _P.kwargs) -> RawResponse[_T]:
        token = begin_raw_call()
        try:
            return cast("RawResponse[_T]", await func(*args, **kwargs))
        finally:
            end_raw_call(token)

    return wrapped
