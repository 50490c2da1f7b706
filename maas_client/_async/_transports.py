"""The transport a client sends through: always an httpx transport object.

- plain ``http://`` and no proxy: the lean transport;
- ``https://``, or proxies named in the environment: httpx's own (``verify``, ``limits``);
- an injected ``http_client``: :class:`AsyncClientAdapter`, which sends through it.
"""

from __future__ import annotations

from typing import Any

import httpx

from .._transport import AsyncLeanTransport, proxies_configured
from .._transport_pool import DEFAULT_LIMITS

__all__ = ["AsyncClientAdapter", "open_transport"]


class AsyncClientAdapter(httpx.AsyncBaseTransport):
    """A transport sending through an :class:`httpx.AsyncClient` (its auth, proxies, mounts,
    cookies and hooks apply); closing it closes the client only when ``owned``."""

    def __init__(self, client: httpx.AsyncClient, *, owned: bool = False) -> None:
        self.client = client
        self.owned = owned

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.client.send(request, stream=True)

    async def aclose(self) -> None:
        if self.owned:
            await self.client.aclose()


def open_transport(
    base_url: str,
    http_client: httpx.AsyncClient | None,
    limits: httpx.Limits | None,
    verify: Any,
    lean: bool = True,
) -> httpx.AsyncBaseTransport:
    """The transport of a client of ``base_url`` (owned by the client unless injected); plain
    ``http://`` through the lean transport unless ``lean`` is false."""
    if http_client is not None:
        return AsyncClientAdapter(http_client)
    pool_limits = limits if limits is not None else DEFAULT_LIMITS  # httpx's default caps
    if proxies_configured():
        # httpx mounts the proxies named in the environment in front of the transport.
        proxied = httpx.AsyncClient(verify=verify, limits=pool_limits, trust_env=True)
        return AsyncClientAdapter(proxied, owned=True)
    if lean and base_url.startswith("http://"):
        return AsyncLeanTransport(limits=pool_limits)  # the pool's caps (httpx's by default)
    return httpx.AsyncHTTPTransport(verify=verify, limits=pool_limits)
