"""The ``maas_client`` logger, switched on by ``MAAS_LOG=info|debug``, with secrets redacted.

Nothing is configured at import: the first client built reads ``MAAS_LOG`` and, when it is set,
gives the logger a stderr handler at that level (once). Applications that configure logging
themselves can leave ``MAAS_LOG`` unset and set the ``maas_client`` logger's level.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

__all__ = ["SENSITIVE_HEADERS", "logger", "redact_headers", "setup_logging"]

logger = logging.getLogger("maas_client")

SENSITIVE_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "cookie"})

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}
_configured = False


def setup_logging(level: str | None) -> None:
    """Turn the logger on at ``level`` (``"info"`` or ``"debug"``); other values do nothing."""
    global _configured
    wanted = _LEVELS.get((level or "").lower())
    if wanted is None or _configured:
        return
    _configured = True
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("[%(asctime)s - %(name)s:%(lineno)d - %(levelname)s] %(message)s")
    )
    logger.addHandler(handler)
    logger.setLevel(wanted)


def redact_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """A copy of ``headers`` safe to log: credentials replaced by ``<redacted>``."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {
        name: "<redacted>" if name.lower() in SENSITIVE_HEADERS else value for name, value in items
    }
