"""The tenacity loop of one call, lean on the path of a call answered at once."""

from __future__ import annotations

import asyncio
from typing import Any

import tenacity

from .._retry import RetryPolicy

__all__ = ["AsyncRetryLoop", "async_retrying"]

_ATTEMPT = tenacity.DoAttempt()


class AsyncRetryLoop(tenacity.AsyncRetrying):
    """Tenacity's loop: an attempt with no outcome before it starts without tenacity's action
    list (no ``before`` callback is set), and the statistics start at the first failure
    (nothing reads them before)."""

    def begin(self) -> None:
        return None

    async def iter(self, retry_state: tenacity.RetryCallState) -> Any:
        if retry_state.outcome is None:
            return _ATTEMPT
        if retry_state.attempt_number == 1:
            super().begin()
        return await super().iter(retry_state)

    def fresh(self) -> AsyncRetryLoop:
        """A loop for one more call with these settings, built without tenacity's constructor
        (the settings are shared; the state of a call lives in the loop's own attributes, and
        what tenacity keeps per thread is only touched between attempts, in one step)."""
        loop = object.__new__(type(self))
        loop.__dict__.update(self.__dict__)
        return loop


def async_retrying(policy: RetryPolicy, settings: dict[str, Any]) -> AsyncRetryLoop:
    """A loop with :func:`~maas_client._retry.retry_kwargs`' settings, waiting with the
    policy's own sleep if it has one: :meth:`AsyncRetryLoop.fresh` gives one per call."""
    return AsyncRetryLoop(sleep=policy.async_sleep or asyncio.sleep, **settings)
