# generated from maas_client/_async/_retrying.py by scripts/unasync.py; do not edit
"""The tenacity loop of one call, lean on the path of a call answered at once."""

from __future__ import annotations

import time
from typing import Any

import tenacity

from .._retry import RetryPolicy

__all__ = ["RetryLoop", "sync_retrying"]

_ATTEMPT = tenacity.DoAttempt()


class RetryLoop(tenacity.Retrying):
    """Tenacity's loop: an attempt with no outcome before it starts without tenacity's action
    list (no ``before`` callback is set), and the statistics start at the first failure
    (nothing reads them before)."""

    def begin(self) -> None:
        return None

    def iter(self, retry_state: tenacity.RetryCallState) -> Any:
        if retry_state.outcome is None:
            return _ATTEMPT
        if retry_state.attempt_number == 1:
            super().begin()
        return super().iter(retry_state)

    def fresh(self) -> RetryLoop:
        """A loop for one more call with these settings, built without tenacity's constructor
        (the settings are shared; the state of a call lives in the loop's own attributes, and
        what tenacity keeps per thread is only touched between attempts, in one step)."""
        loop = object.__new__(type(self))
        loop.__dict__.update(self.__dict__)
        return loop


def sync_retrying(policy: RetryPolicy, settings: dict[str, Any]) -> RetryLoop:
    """A loop with :func:`~maas_client._retry.retry_kwargs`' settings, waiting with the
    policy's own sleep if it has one: :meth:`AsyncRetryLoop.fresh` gives one per call."""
    return RetryLoop(sleep=policy.sleep or time.sleep, **settings)
