"""What the client reads from the environment, read when a client is built (never at import).

- ``MAAS_BASE_URL``: the server (default ``http://127.0.0.1:8000``).
- ``MAAS_API_KEY``: sent as ``Authorization: Bearer <key>``.
- ``MAAS_TIMEOUT``: seconds for each network phase (default 60; connect 5).
- ``MAAS_MAX_RETRIES``: retries after the first attempt (default 2).
- ``MAAS_LOG``: ``info`` or ``debug`` turns on the ``maas_client`` logger.
- ``MAAS_TRANSPORT``: ``httpx`` sends plain ``http://`` through httpx's own transport instead of
  the lean one (``lean``, the default); the test suite runs once over each.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "EnvSettings",
]

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_MAX_RETRIES = 2
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)


@dataclass(frozen=True)
class EnvSettings:
    """Client settings taken from ``MAAS_*`` environment variables; ``None`` where unset."""

    base_url: str | None = None
    api_key: str | None = None
    timeout: float | None = None
    max_retries: int | None = None
    log: str | None = None
    transport: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EnvSettings:
        """Read the ``MAAS_*`` variables; a malformed number is an error that names the variable."""
        env = os.environ if environ is None else environ
        return cls(
            base_url=env.get("MAAS_BASE_URL") or None,
            api_key=env.get("MAAS_API_KEY") or None,
            timeout=_number(env, "MAAS_TIMEOUT", float),
            max_retries=_integer(env, "MAAS_MAX_RETRIES"),
            log=(env.get("MAAS_LOG") or "").strip().lower() or None,
            transport=_choice(env, "MAAS_TRANSPORT", ("lean", "httpx")),
        )


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    text = env.get(name, "").strip().lower()
    if not text:
        return None
    if text not in choices:
        raise ValueError(f"{name}={text!r} is not one of {', '.join(choices)}")
    return text


def _integer(env: Mapping[str, str], name: str) -> int | None:
    value = _number(env, name, int)
    return None if value is None else int(value)


def _number(env: Mapping[str, str], name: str, kind: type[float] | type[int]) -> float | None:
    text = env.get(name, "").strip()
    if not text:
        return None
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a valid {kind.__name__}") from None
    if value < 0:
        raise ValueError(f"{name}={text!r} must not be negative")
    return value
