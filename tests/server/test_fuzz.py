"""Random requests against the handlers (hypothesis, through ``httpx.ASGITransport``): paths from
the route table with hostile parameters, random methods, JSON and binary bodies, and random
headers, with access control on. No answer may be a server error or take more than a few
seconds, and afterwards the server still answers a good request. Bounded to well under a minute.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from maas_server import Settings
from maas_server.auth import path_target
from maas_server.openapi import route_operations
from tests.server.apps import asgi_app, bearer, mlp_request

ADMIN = "fuzz-admin-key"
LOADED = ("mlp", "strings", "add", "scalar", "identity_fp32", "identity_bytes", "versioned")
DATATYPES = ["BOOL", "UINT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BF16", "BYTES", "X"]
EXAMPLES = 3000  # about 25 s here
ANSWER_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def target(
    repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[asyncio.AbstractEventLoop, Any, Starlette]]:
    """One app for every example, with its own event loop (hypothesis drives sync tests), on a
    copy of the repository (the admin key may delete and publish models)."""
    loop = asyncio.new_event_loop()
    copy = tmp_path_factory.mktemp("fuzz") / "repository"
    shutil.copytree(repository, copy)
    app_settings = Settings(
        repository=copy,
        admin_api_key=ADMIN,
        max_body_bytes=256 * 1024,
        max_tensor_elements=100_000,
        request_timeout_s=5.0,
        strict_readiness=False,
    )
    context = asgi_app(app_settings, models=LOADED)
    app, client = loop.run_until_complete(context.__aenter__())
    yield loop, client, app
    loop.run_until_complete(context.__aexit__(None, None, None))
    loop.close()


_PARAM = re.compile(r"\{(\w+)\}")
_ASCII = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
hostile_names = st.one_of(
    st.sampled_from([*LOADED, "corrupt", "nosuch", "..", ".", "%2e%2e", "a/../b", "stats"]),
    st.text(min_size=1, max_size=20).filter(lambda s: "/" not in s and s not in (".", "..")),
)
versions = st.one_of(
    st.sampled_from(["1", "2", "3", "0", "-1", "99999999999999999999", "x", "1.0"]),
    st.text(_ASCII, min_size=1, max_size=8).filter(lambda s: "/" not in s and s.strip(".")),
)

huge_dims = st.one_of(
    st.sampled_from([2**31, 2**32, 2**53, 2**62, 2**63 - 1, 2**63, 2**64, 10**30]),
    st.integers(min_value=2**31, max_value=2**70),
)
"""Dimensions beyond any tensor; with a 0 elsewhere, shapes that hold no element at all."""
_LATIN1 = st.characters(max_codepoint=0xFF, blacklist_categories=["Cc"])
header_numbers = st.one_of(
    st.integers(-3, 2000).map(str),
    st.text(_ASCII, max_size=6),
    st.text(_LATIN1, max_size=6),  # ² and ³ are digits to str.isdigit, not to int()
    st.sampled_from(["\u00b2", "1\u00b3", "\u00b9\u00b2", " 7 ", "0" * 30]),
    st.integers(19, 6000).map(lambda n: "9" * n),  # past int()'s 4300 digits, past int64
)
"""Values of ``Inference-Header-Content-Length`` (sent as Latin-1 bytes, as HTTP carries)."""

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@st.composite
def inference_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """Inference requests that are nearly right: real input names, odd shapes and data."""
    dims = st.one_of(st.integers(-2, 70), huge_dims)
    if draw(st.integers(0, 9)) == 0:
        shape = draw(st.lists(st.integers(0, 2), min_size=60, max_size=80))  # around 64 dims
    else:
        shape = draw(st.lists(dims, max_size=draw(st.sampled_from([3, 3, 8]))))
    entry: dict[str, Any] = {
        "name": draw(st.sampled_from(["input", "text", "INPUT0", "x", ""])),
        "shape": shape,
        "datatype": draw(st.sampled_from(DATATYPES)),
    }
    if draw(st.booleans()):
        entry["data"] = draw(json_values)
    else:
        entry["parameters"] = {"binary_data_size": draw(st.integers(-1, 300))}
    body: dict[str, Any] = {"inputs": [entry]}
    if draw(st.booleans()):
        names = st.sampled_from(["priority", "timeout", "binary_data_output", "x"])
        body["parameters"] = draw(st.dictionaries(names, json_values, max_size=2))
    if draw(st.booleans()):
        body["outputs"] = [{"name": draw(st.sampled_from(["output", "upper", "nope"]))}]
    return body


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes]:
    operations = [(p, m) for p, m, _ in route_operations(_ROUTES)]
    if draw(st.integers(0, 2)) == 0:  # inference on a loaded model: where bodies are decoded
        path, method = f"/v2/models/{draw(st.sampled_from(LOADED))}/infer", "POST"
        kind = draw(st.sampled_from(["inference", "framed", "framed"]))
    else:
        path, method = draw(st.sampled_from(operations))
        path = _PARAM.sub(
            lambda m: draw(hostile_names if m.group(1) == "model" else versions), path
        )
        if draw(st.integers(0, 9)) == 0:
            method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]))
        kind = draw(st.sampled_from(["none", "json", "inference", "binary", "framed"]))
    body = b""
    headers: dict[str, str] = {}
    if kind == "json":
        body = json.dumps(draw(json_values)).encode()
    elif kind == "inference":
        body = json.dumps(draw(inference_bodies())).encode()
    elif kind == "binary":
        body = draw(st.binary(max_size=600))
    elif kind == "framed":
        header = json.dumps(draw(inference_bodies())).encode()
        body = header + draw(st.binary(max_size=400))
        headers["Inference-Header-Content-Length"] = str(len(header))
    if draw(st.integers(0, 3)) == 0:
        headers["Inference-Header-Content-Length"] = draw(header_numbers)
    if draw(st.integers(0, 5)) == 0:
        headers["Content-Encoding"] = draw(st.sampled_from(["gzip", "deflate", "br", "x"]))
    auth = draw(st.sampled_from(["admin", "admin", "admin", "none", "wrong", "garbage"]))
    if auth == "admin":
        headers.update(bearer(ADMIN))
    elif auth == "wrong":
        headers.update(bearer("maas_" + draw(st.text(_ASCII, max_size=20))))
    elif auth == "garbage":
        headers["Authorization"] = draw(st.text(_ASCII, max_size=30))
    if draw(st.booleans()):
        headers["X-Request-ID"] = draw(st.text(_ASCII, max_size=40))
    return method, path, headers, body


_ROUTES: list[Any] = []


def _acceptable_503(path: str, answer: httpx.Response) -> bool:
    """503 is the protocol's answer for a model that is not ready (to a ready check, or to a
    call that needs the model): never loaded here, or
    unloaded (or loaded with a bad configuration) by an earlier example through the repository
    API, which the admin key may call."""
    if path_target(path)[0] is None:
        return False
    body = answer.json()
    return body.get("ready") is False or "is not ready" in body.get("error", "")


def test_fuzz_handlers(target: tuple[asyncio.AbstractEventLoop, Any, Starlette]) -> None:
    loop, client, app = target
    _ROUTES[:] = app.routes
    started = time.monotonic()
    statuses: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(requests())
    def check(request: tuple[str, str, dict[str, str], bytes]) -> None:
        method, path, headers, body = request
        try:
            answer = loop.run_until_complete(
                asyncio.wait_for(
                    client.request(
                        method,
                        path,
                        headers={k: v.encode("latin-1") for k, v in headers.items()},
                        content=body,
                    ),
                    ANSWER_TIMEOUT_S,
                )
            )
        except httpx.InvalidURL:
            return  # not something a client could send
        statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
        if answer.status_code >= 500:
            assert answer.status_code == 503 and _acceptable_503(path, answer), (
                method,
                path,
                headers,
                body[:200],
                answer.status_code,
                answer.text[:500],
            )
        if answer.status_code >= 400 and method != "OPTIONS" and not path.endswith("/ready"):
            assert "error" in answer.json(), answer.text

    check()
    assert time.monotonic() - started < 120
    print("answers by status:", dict(sorted(statuses.items())))
    assert len(statuses) > 4, statuses  # the examples reached more than one kind of answer
    # Still healthy. (The examples may have unloaded mlp through the repository API.)
    live = loop.run_until_complete(client.get("/v2/health/live"))
    assert live.status_code == 200
    reload = client.post("/v2/repository/models/mlp/load", headers=bearer(ADMIN))
    assert loop.run_until_complete(reload).status_code == 200
    request = mlp_request()
    request["headers"].update(bearer(ADMIN))
    good = loop.run_until_complete(client.post("/v2/models/mlp/infer", **request))
    assert good.status_code == 200, good.text
