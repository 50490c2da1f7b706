"""When and how long to wait before trying a call again (tenacity's settings; the loop is in
``_async/_retrying.py``).

The decisions follow openai-python's client: connection errors, timeouts and the statuses 408,
429, 500, 502, 503 and 504 are retried; ``Retry-After`` (seconds or an HTTP date) and
``retry-after-ms`` are honoured up to :attr:`RetryPolicy.max_retry_after`; otherwise the delay
doubles from :attr:`RetryPolicy.initial_delay` up to :attr:`RetryPolicy.max_delay`, less a random
jitter of up to 25%. Calls that are not idempotent (loading and unloading models) are retried only
when the server cannot have acted on them: the connection was never made, or the answer is 408,
429 or 503.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import tenacity

from ._exceptions import APIConnectionError, APIError, APIStatusError
from ._logs import logger

__all__ = [
    "NOT_ACTED_ON_STATUSES",
    "RETRY_STATUSES",
    "RetryEvent",
    "RetryPolicy",
    "RetryScope",
    "backoff_delay",
    "is_retryable",
    "next_delay",
    "retry_after_seconds",
    "retry_kwargs",
]

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""Statuses retried by default."""

NOT_ACTED_ON_STATUSES = frozenset({408, 429, 503})
"""Statuses that say the server did not act on the request, so that retrying is safe even for a
call that is not idempotent."""


@dataclass(frozen=True)
class RetryEvent:
    """Given to :attr:`RetryPolicy.on_retry` before each wait: what failed and what comes next."""

    attempt: int
    """The attempt that failed, from 1."""
    delay: float
    """Seconds the client waits before the next attempt."""
    error: APIError
    method: str
    url: str
    request_id: str | None


@dataclass(frozen=True)
class RetryPolicy:
    """How retries wait. The number of retries is the client's ``max_retries``.

    ``sleep`` and ``async_sleep`` replace :func:`time.sleep` and :func:`asyncio.sleep` (tests
    use them to record delays instead of waiting); ``on_retry`` is called before every wait.

    >>> Client(retry_policy=RetryPolicy(initial_delay=0.1, max_delay=2.0))  # doctest: +SKIP
    """

    initial_delay: float = 0.5
    max_delay: float = 8.0
    jitter: float = 0.25
    """Each back-off delay is multiplied by a random factor in ``[1 - jitter, 1]``."""
    max_retry_after: float = 60.0
    """The longest ``Retry-After`` obeyed; longer requests wait this long."""
    retry_statuses: frozenset[int] = RETRY_STATUSES
    sleep: Callable[[float], None] | None = None
    async_sleep: Callable[[float], Awaitable[None]] | None = None
    on_retry: Callable[[RetryEvent], None] | None = None
    random: Callable[[], float] = field(default=random.random, repr=False)


def _seconds(text: str, scale: float = 1.0) -> float | None:
    """A finite, non-negative number of seconds, or ``None`` (not a number, NaN, infinite or
    negative: not a wait the client can honour)."""
    try:
        value = float(text) / scale
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The wait a server asks for: ``retry-after-ms``, else ``Retry-After`` in seconds or as an
    HTTP date; ``None`` when it asks for nothing readable (NaN, infinite or negative numbers
    included: the back-off applies then). Never negative; :func:`next_delay` caps it."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        asked = _seconds(millis.strip(), 1000.0)
        if asked is not None:
            return asked
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    current = time.time() if now is None else now
    return max(when.timestamp() - current, 0.0)


def backoff_delay(policy: RetryPolicy, retries_done: int) -> float:
    """Exponential back-off with jitter before retry number ``retries_done + 1``."""
    base = min(policy.initial_delay * (2.0**retries_done), policy.max_delay)
    return base * (1.0 - policy.jitter * policy.random())


def next_delay(policy: RetryPolicy, error: BaseException | None, retries_done: int) -> float:
    """The wait before the next attempt: what the server asked for (capped), else back-off."""
    if isinstance(error, APIStatusError):
        asked = retry_after_seconds(error.response.headers)
        if asked is not None:
            return min(asked, policy.max_retry_after)
    return backoff_delay(policy, retries_done)


def is_retryable(error: BaseException, *, idempotent: bool, statuses: frozenset[int]) -> bool:
    """Whether a failed attempt may be tried again."""
    if isinstance(error, APIStatusError):
        if error.status_code not in statuses:
            return False
        return idempotent or error.status_code in NOT_ACTED_ON_STATUSES
    if isinstance(error, APIConnectionError):
        return idempotent or not error.sent
    return False


class _Wait(tenacity.wait.wait_base):
    def __init__(
        self, policy: RetryPolicy, fail_over: Callable[[BaseException], bool] | None = None
    ) -> None:
        self.policy = policy
        self.fail_over = fail_over

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if self.fail_over is not None and error is not None and self.fail_over(error):
            return 0.0  # the next attempt goes to another server: nothing to wait for
        return next_delay(self.policy, error, retry_state.attempt_number - 1)


class _StopAtDeadline(tenacity.stop.stop_base):
    """Stop when the next attempt could not start before the call's deadline."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return time.monotonic() + retry_state.upcoming_sleep >= self.deadline


@dataclass(frozen=True)
class RetryScope:
    """What the retries of one call go by (``deadline`` is on :func:`time.monotonic`'s clock).

    ``fail_over(error)`` says whether the next attempt goes at once to another server (then it
    does not wait). The method, URL and request id that retries log and report come from the
    failed attempt's error."""

    max_retries: int
    idempotent: bool
    deadline: float | None = None
    fail_over: Callable[[BaseException], bool] | None = None


def _where(error: APIError) -> tuple[str, str]:
    request = error.request
    if request is None:
        return "?", "?"
    return request.method, str(request.url)


def retry_kwargs(policy: RetryPolicy, scope: RetryScope) -> dict[str, Any]:
    """Tenacity's settings for the retries of ``scope`` (the same for every call of a client
    with one deadline-free scope: the pipeline keeps them)."""
    stop: tenacity.stop.stop_base = tenacity.stop_after_attempt(scope.max_retries + 1)
    if scope.deadline is not None:
        stop = stop | _StopAtDeadline(scope.deadline)

    def before_sleep(retry_state: tenacity.RetryCallState) -> None:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        assert isinstance(error, APIError)
        delay = retry_state.upcoming_sleep
        method, url = _where(error)
        logger.info(
            "retrying %s %s in %.2f s (attempt %d of %d failed: %s) [request id %s]",
            method,
            url,
            delay,
            retry_state.attempt_number,
            scope.max_retries + 1,
            error,
            error.request_id,
        )
        if policy.on_retry is not None:
            policy.on_retry(
                RetryEvent(retry_state.attempt_number, delay, error, method, url, error.request_id)
            )

    return {
        "stop": stop,
        "wait": _Wait(policy, scope.fail_over),
        "retry": tenacity.retry_if_exception(
            lambda exc: is_retryable(
                exc, idempotent=scope.idempotent, statuses=policy.retry_statuses
            )
        ),
        "before_sleep": before_sleep,
        "reraise": True,
    }
