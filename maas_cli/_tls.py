"""The oldest TLS version ``maas serve`` accepts (for one process and for each worker)."""

from __future__ import annotations

import ssl

__all__ = ["TLS_MINIMUM_VERSION", "tls_floor"]

TLS_MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
"""The oldest TLS version ``maas serve`` accepts, whatever Python, OpenSSL or uvicorn allow."""


def tls_floor(context: ssl.SSLContext) -> ssl.SSLContext:
    """Refuse TLS versions before :data:`TLS_MINIMUM_VERSION` (and SSL) on ``context``."""
    current = context.minimum_version  # MINIMUM_SUPPORTED is -2, MAXIMUM_SUPPORTED -1
    if current != ssl.TLSVersion.MAXIMUM_SUPPORTED and current < TLS_MINIMUM_VERSION:
        context.minimum_version = TLS_MINIMUM_VERSION
    return context
