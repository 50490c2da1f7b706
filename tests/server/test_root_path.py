"""Access behind a path prefix: a proxy's ``--root-path`` and the app mounted under a path.

The router matches the path less ``root_path``; access control must decide on that same path,
otherwise a key limited to one model reads (and, with the repository API, unloads) the others,
and the open health probes ask for a key.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.routing import Mount

from maas_server import Settings, create_app
from maas_server.auth import route_path
from maas_server.keys_file import add_key
from tests.server.apps import bearer, mlp_request

PREFIX = "/api"


@pytest.fixture
def limited(tmp_path: Path) -> dict[str, Any]:
    """A keys file with a key for model ``mlp`` only (infer and read) and an admin key."""
    path = tmp_path / "keys.json"
    mlp_user, _ = add_key(path, "mlp-user", ["infer", "read"], models=["mlp"])
    admin, _ = add_key(path, "administrator", ["admin", "read"])
    return {"path": path, "mlp_user": mlp_user, "admin": admin}


@asynccontextmanager
async def prefixed(
    repository: Path, keys: Path, how: str
) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    """The maas app behind ``PREFIX``: as uvicorn ``--root-path`` passes it (``root_path`` set,
    the path keeps the prefix), or mounted under it in a Starlette app."""
    app = create_app(Settings(repository, model_control="explicit", api_keys_file=keys))
    async with LifespanManager(app) as manager:
        for name in ("mlp", "add"):
            await asyncio.to_thread(app.state.dataplane.repository.load, name)
        if how == "root_path":
            transport = httpx.ASGITransport(app=manager.app, root_path=PREFIX)
        else:
            outer = Starlette(routes=[Mount(PREFIX, app=manager.app)])
            transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://maas.test") as client:
            yield app, client


@pytest.mark.parametrize("how", ["root_path", "mount"])
async def test_a_model_limited_key_stays_limited_behind_a_prefix(
    repository: Path, limited: dict[str, Any], how: str
) -> None:
    async with prefixed(repository, limited["path"], how) as (app, client):
        user = bearer(limited["mlp_user"])
        # Another model: neither its metadata nor the repository API (the key has no admin).
        refused = await client.get(f"{PREFIX}/v2/models/add", headers=user)
        assert refused.status_code == 403, refused.text
        assert "may not use model 'add'" in refused.json()["error"]
        unload = await client.post(f"{PREFIX}/v2/repository/models/add/unload", headers=user)
        assert unload.status_code == 403, unload.text
        assert "'admin' scope" in unload.json()["error"]
        assert app.state.dataplane.repository.record("add").state == "READY"
        index = await client.post(f"{PREFIX}/v2/repository/index", headers=user)
        assert index.status_code == 403
        # /metrics covers every model: not for a model-limited key.
        assert (await client.get(f"{PREFIX}/metrics", headers=user)).status_code == 403
        # Health probes stay open, as without a prefix.
        assert (await client.get(f"{PREFIX}/v2/health/live")).status_code == 200
        assert (await client.get(f"{PREFIX}/v2/health/ready")).status_code == 200
        # Good requests still work.
        assert (await client.get(f"{PREFIX}/v2/models/mlp", headers=user)).status_code == 200
        request = mlp_request()
        request["headers"].update(user)
        infer = await client.post(f"{PREFIX}/v2/models/mlp/infer", **request)
        assert infer.status_code == 200, infer.text
        admin = bearer(limited["admin"])
        assert (await client.get(f"{PREFIX}/v2/models/add", headers=admin)).status_code == 200
        assert (await client.get(f"{PREFIX}/v2/models/add")).status_code == 401


@pytest.mark.parametrize(
    ("path", "root_path", "expected"),
    [
        ("/v2/models/a", "", "/v2/models/a"),
        ("/api/v2/models/a", "/api", "/v2/models/a"),
        ("/api", "/api", ""),
        ("/apix/v2/models/a", "/api", "/apix/v2/models/a"),  # not under the prefix
        ("/v2/models/a", "/api", "/v2/models/a"),  # servers that strip the prefix themselves
    ],
)
def test_route_path_is_what_the_router_matches(path: str, root_path: str, expected: str) -> None:
    from starlette._utils import get_route_path

    scope = {"type": "http", "path": path, "root_path": root_path}
    assert route_path(scope) == expected == get_route_path(scope)
