"""One table from what a socket, an SSL layer or the HTTP parser raises to httpx's exceptions.

Both lean transports (:mod:`maas_client._transport`) raise only httpx's exceptions, so the
client's retry decisions do not depend on the transport that carried the call. What an error
becomes depends on the phase it happened in: a timeout while connecting is a
:class:`httpx.ConnectTimeout`, while reading a :class:`httpx.ReadTimeout`; a reset while
writing a :class:`httpx.WriteError`, while reading a :class:`httpx.ReadError`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import Literal

import httptools
import httpx

__all__ = ["CLOSED_UNDER_US", "Phase", "disconnected", "transport_error"]

Phase = Literal["pool", "connect", "write", "read"]

_TIMEOUT: Mapping[Phase, type[httpx.TransportError]] = {
    "pool": httpx.PoolTimeout,
    "connect": httpx.ConnectTimeout,
    "write": httpx.WriteTimeout,
    "read": httpx.ReadTimeout,
}
_FAILED: Mapping[Phase, type[httpx.TransportError]] = {
    "pool": httpx.PoolTimeout,
    "connect": httpx.ConnectError,
    "write": httpx.WriteError,
    "read": httpx.ReadError,
}
_PROTOCOL: Mapping[Phase, type[httpx.TransportError]] = dict.fromkeys(
    _FAILED, httpx.RemoteProtocolError
)

# First match wins: subclasses before their bases (ssl.SSLError and TimeoutError are OSErrors).
_TABLE: tuple[tuple[type[BaseException], Mapping[Phase, type[httpx.TransportError]]], ...] = (
    (TimeoutError, _TIMEOUT),  # socket.timeout is TimeoutError
    (asyncio.TimeoutError, _TIMEOUT),  # a distinct class before Python 3.11
    (ssl.SSLError, _FAILED),
    (httptools.HttpParserUpgrade, _PROTOCOL),  # a 101 nobody asked for
    (httptools.HttpParserError, _PROTOCOL),
    (EOFError, _PROTOCOL),
    (OSError, _FAILED),
)

# What a connection closed by the server looks like (RST, or EOF where an answer was due): a
# request that failed so on a reused connection before any byte of its answer may be resent.
CLOSED_UNDER_US: tuple[type[BaseException], ...] = (
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    EOFError,
)


def transport_error(exc: BaseException, phase: Phase, where: str = "") -> httpx.TransportError:
    """The httpx exception for ``exc`` raised during ``phase`` (``where`` prefixes its text).

    An httpx exception is returned as it is; an exception the table does not know is returned
    as a :class:`httpx.TransportError` of the phase's failure class, so nothing else escapes.
    """
    if isinstance(exc, httpx.TransportError):
        return exc
    for kind, by_phase in _TABLE:
        if isinstance(exc, kind):
            cls = by_phase[phase]
            break
    else:
        cls = _FAILED[phase]
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httptools.HttpParserUpgrade):
        text = "the server switched protocols unasked (101)"
    return cls(f"{where}: {text}" if where else text)


def disconnected(inside_body: bool) -> httpx.RemoteProtocolError:
    """The error for a connection the server closed before its answer was complete."""
    if inside_body:
        return httpx.RemoteProtocolError("server disconnected inside the response body")
    return httpx.RemoteProtocolError("server disconnected without sending a response")
