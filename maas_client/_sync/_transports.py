# generated from maas_client/_async/_transports.py by scripts/unasync.py; do not edit
"""The transport a client sends through: always an httpx transport object.

- plain ``http://`` and no proxy: the lean transport;
- ``https://``, or proxies named in the environment: httpx's own (``verify``, ``limits``);
- an injected ``http_client``: :class:`AsyncClientAdapter`, which sends through it.
"""

from __future__ import annotations

from typing import Any

import httpx

from .._transport import LeanTransport, proxies_configured
from .._transport_pool import DEFAULT_LIMITS

__all__ = ["ClientAdapter", "open_transport"]


class ClientAdapter(httpx.BaseTransport):
    """A transport sending through an :class:`httpx.AsyncClient` (its auth, proxies, mounts,
    cookies and hooks apply); closing it closes the client only when ``owned``."""

    def __init__(self, client: httpx.Client, *, owned: bool = False) -> None:
        self.client = client
        self.owned = owned

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.client.send(request, stream=True)

    def close(self) -> None:
        if self.owned:
            self.client.close()


def open_transport(
    base_url: str,
    http_client: httpx.Client | None,
    limits: httpx.Limits | None,
    verify: Any,
    lean: bool = True,
) -> httpx.BaseTransport:
    """The transport of a client of ``base_url`` (owned by the client unless injected); plain
    ``http://`` through the lean transport unless ``lean`` is false."""
    if http_client is not None:
        return ClientAdapter(http_client)
    pool_limits = limits if limits is not None else DEFAULT_LIMITS  # httpx's default caps
    if proxies_configured():
        # httpx mounts the proxies named in the environment in front of the transport.
        proxied = httpx.Client(verify=verify, limits=pool_limits, trust_env=True)
        return ClientAdapter(proxied, owned=True)
    if lean and base_url.startswith("http://"):
        return LeanTransport(limits=pool_limits)  # the pool's caps (httpx's by default)
    return httpx.HTTPTransport(verify=verify, limits=pool_limits)
