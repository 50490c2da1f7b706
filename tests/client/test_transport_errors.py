"""The one table from socket, SSL and parser errors to httpx's exceptions, by phase."""

from __future__ import annotations

import asyncio
import socket
import ssl

import httptools
import httpx
import pytest

from maas_client._transport_errors import CLOSED_UNDER_US, Phase, disconnected, transport_error

CASES: list[tuple[BaseException, Phase, type[httpx.TransportError]]] = [
    (TimeoutError("timed out"), "connect", httpx.ConnectTimeout),
    (socket.timeout("timed out"), "write", httpx.WriteTimeout),  # noqa: UP041
    (TimeoutError(), "read", httpx.ReadTimeout),
    (asyncio.TimeoutError(), "pool", httpx.PoolTimeout),
    (ConnectionRefusedError(111, "Connection refused"), "connect", httpx.ConnectError),
    (socket.gaierror(-2, "Name or service not known"), "connect", httpx.ConnectError),
    (ssl.SSLError(1, "bad handshake"), "connect", httpx.ConnectError),
    (ssl.SSLEOFError(8, "EOF"), "read", httpx.ReadError),
    (ConnectionResetError(104, "Connection reset by peer"), "read", httpx.ReadError),
    (BrokenPipeError(32, "Broken pipe"), "write", httpx.WriteError),
    (OSError(101, "Network is unreachable"), "connect", httpx.ConnectError),
    (httptools.HttpParserError("Invalid header value char"), "read", httpx.RemoteProtocolError),
    (httptools.HttpParserInvalidStatusError("bad"), "read", httpx.RemoteProtocolError),
    (httptools.HttpParserUpgrade(12), "read", httpx.RemoteProtocolError),
    (EOFError(), "read", httpx.RemoteProtocolError),
    (RuntimeError("anything else"), "write", httpx.WriteError),
]


@pytest.mark.parametrize(("error", "phase", "expected"), CASES, ids=lambda v: repr(v)[:40])
def test_each_error_maps_to_its_httpx_exception(
    error: BaseException, phase: Phase, expected: type[httpx.TransportError]
) -> None:
    mapped = transport_error(error, phase, "where")
    assert type(mapped) is expected
    assert str(mapped).startswith("where: ")


def test_httpx_errors_pass_through_and_text_is_kept() -> None:
    original = httpx.ReadTimeout("already mapped")
    assert transport_error(original, "connect") is original
    assert str(transport_error(ConnectionRefusedError(111, "refused"), "connect")) == (
        "[Errno 111] refused"
    )
    assert "switched protocols" in str(transport_error(httptools.HttpParserUpgrade(3), "read"))


def test_what_counts_as_a_connection_closed_under_us() -> None:
    closed: list[BaseException] = [
        ConnectionResetError(),
        BrokenPipeError(),
        ConnectionAbortedError(),
        EOFError(),
    ]
    assert all(isinstance(error, CLOSED_UNDER_US) for error in closed)
    others: list[BaseException] = [TimeoutError(), ConnectionRefusedError(), OSError()]
    assert not any(isinstance(error, CLOSED_UNDER_US) for error in others)
    assert "without sending a response" in str(disconnected(inside_body=False))
    assert "inside the response body" in str(disconnected(inside_body=True))
