"""API keys: the keys file, the rate limiter, the key store's reloads and every access rule, each
both ways (allowed and refused), in-process and against a real uvicorn while keys rotate."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from typer.testing import CliRunner

from maas_cli import app as cli_app
from maas_server import Settings
from maas_server.asgi import Message, Receive, Scope, Send
from maas_server.auth import (
    SCOPE_MODEL,
    AccessControl,
    KeyStore,
    TokenBucket,
    access_rule,
    path_target,
    require_model_access,
)
from maas_server.errors import ForbiddenError
from maas_server.guard import RequestGuard
from maas_server.keys_file import (
    KeyEntry,
    KeysFileError,
    add_key,
    generate_key,
    hash_key,
    parse_rate,
    read_keys,
    revoke_key,
    write_keys,
)
from maas_server.stats import Rejections
from tests.conftest import start_server, wait_for
from tests.server.apps import asgi_app, bearer, mlp_request
from tests.waiting import until


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- the keys file ------------------------------------------------------------------------


def test_generated_keys_are_random_and_stored_as_hashes(tmp_path: Path) -> None:
    first, second = generate_key(), generate_key()
    assert first != second and first.startswith("maas_") and len(first) > 40
    path = tmp_path / "keys.json"
    key, entry = add_key(path, "ci", ["infer", "read"], models=["mlp"], rate=5.0, concurrency=2)
    text = path.read_text()
    assert key not in text
    assert entry.hash == hash_key(key) and entry.hash in text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    (loaded,) = read_keys(path)
    assert loaded == entry
    assert loaded.scopes == ("infer", "read") and loaded.models == ("mlp",)
    assert loaded.rate == 5.0 and loaded.concurrency == 2 and loaded.created


def test_add_and_revoke(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    add_key(path, "a", ["read"])
    add_key(path, "b", ["admin"])
    with pytest.raises(KeysFileError, match="already exists"):
        add_key(path, "a", ["read"])
    assert revoke_key(path, "a") is True
    assert revoke_key(path, "a") is False
    assert [e.name for e in read_keys(path)] == ["b"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "x", "hash": "sha256:zz", "scopes": ["read"]}, "'hash'"),
        ({"name": "x", "hash": "sha256:" + "a" * 64, "scopes": ["root"]}, "'scopes'"),
        ({"name": "x", "hash": "sha256:" + "a" * 64, "scopes": []}, "'scopes'"),
        ({"name": "bad name", "hash": "sha256:" + "a" * 64, "scopes": ["read"]}, "'name'"),
        ({"name": "x", "hash": "sha256:" + "a" * 64, "scopes": ["read"], "rate": -1}, "'rate'"),
        ({"name": "x", "hash": "sha256:" + "a" * 64, "scopes": ["read"], "burst": 1.5}, "burst"),
        ({"name": "x", "hash": "sha256:" + "a" * 64, "scopes": ["read"], "models": "m"}, "models"),
        ({"name": "x", "hash": "sha256:" + "a" * 64, "scopes": ["read"], "key": "s"}, "unknown"),
    ],
)
def test_bad_entries_are_refused_with_a_reason(
    tmp_path: Path, entry: dict[str, Any], message: str
) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [entry]}))
    with pytest.raises(KeysFileError, match=message):
        read_keys(path)


def test_duplicate_names_and_bad_json_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    digest = "sha256:" + "a" * 64
    path.write_text(json.dumps({"keys": [{"name": "x", "hash": digest, "scopes": ["read"]}] * 2}))
    with pytest.raises(KeysFileError, match="two keys"):
        read_keys(path)
    path.write_text("{not json")
    with pytest.raises(KeysFileError, match="not valid JSON"):
        read_keys(path)
    path.write_text("[]")
    with pytest.raises(KeysFileError, match="keys"):
        read_keys(path)
    assert read_keys(tmp_path / "missing.json") == []


@pytest.mark.parametrize(
    ("text", "per_second"), [("50", 50.0), ("50/s", 50.0), ("600/m", 10.0), ("36/h", 0.01)]
)
def test_parse_rate(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["", "fast", "0/s", "-1/s", "5/d", "inf"])
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(KeysFileError):
        parse_rate(text)


# --- the rate limiter and the key store -------------------------------------------------------


def test_token_bucket_with_a_fake_clock() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)
    clock.advance(0.25)
    assert bucket.take() == pytest.approx(0.25)  # half a token so far
    clock.advance(0.25)
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.5)
    clock.advance(100)  # idle time refills up to the burst, not beyond
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() > 0


def test_key_store_reloads_when_the_file_changes(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "keys.json"
    first, _ = add_key(path, "first", ["read"], rate=0.1)
    store = KeyStore(path, admin_key="root-key", reload_interval=1.0, clock=clock)
    assert store.lookup("root-key") is not None
    key = store.lookup(first)
    assert key is not None and key.name == "first"
    assert store.lookup("maas_wrong") is None
    assert key.bucket is not None and key.bucket.take() == 0.0

    second, _ = add_key(path, "second", ["infer"])
    assert store.lookup(second) is None  # not looked at again before the interval
    clock.advance(1.0)
    assert store.lookup(second) is not None
    # An unchanged key keeps its rate state across the reload: its one token is still spent.
    kept = store.lookup(first)
    assert kept is key and kept.bucket is not None and kept.bucket.take() > 0

    good = read_keys(path)
    path.write_text("{broken")  # a bad file keeps the previous keys
    clock.advance(1.0)
    assert store.lookup(second) is not None

    write_keys(path, [e for e in good if e.name != "second"])
    clock.advance(1.0)
    assert store.lookup(second) is None and store.lookup(first) is not None

    path.unlink()  # a deleted file leaves only the admin key
    clock.advance(1.0)
    assert store.lookup(first) is None and store.lookup("root-key") is not None


def test_key_store_refuses_a_bad_or_missing_file_at_start(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        KeyStore(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(KeysFileError):
        KeyStore(tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("method", "path", "scope", "model"),
    [
        ("GET", "/v2", "read", None),
        ("GET", "/v2/health/ready", "read", None),
        ("GET", "/metrics", "read", None),
        ("GET", "/v2/openapi.json", "read", None),
        ("GET", "/v2/models/stats", "read", None),
        ("GET", "/v2/models/mlp", "read", "mlp"),
        ("GET", "/v2/models/mlp/versions/2/config", "read", "mlp"),
        ("GET", "/v2/models/mlp/stats", "read", "mlp"),
        ("POST", "/v2/models/mlp/infer", "infer", "mlp"),
        ("POST", "/v2/models/mlp/versions/1/infer", "infer", "mlp"),
        ("POST", "/v2/models/gpt/generate", "infer", "gpt"),
        ("POST", "/v2/models/gpt/generate_stream", "infer", "gpt"),
        ("POST", "/v1/completions", "infer", None),
        ("POST", "/v1/chat/completions", "infer", None),
        ("GET", "/v1/models", "read", None),
        ("GET", "/v1/models/gpt", "read", "gpt"),
        ("POST", "/v2/repository/index", "admin", None),
        ("POST", "/v2/repository/models/mlp/load", "admin", "mlp"),
        ("POST", "/v2/repository/models/mlp/unload", "admin", "mlp"),
    ],
)
def test_access_rules(method: str, path: str, scope: str, model: str | None) -> None:
    assert access_rule(method, path) == (scope, model)


def test_path_target() -> None:
    assert path_target("/v2/models/mlp/versions/3/infer") == ("mlp", "3")
    assert path_target("/v2/models/mlp/infer") == ("mlp", None)
    assert path_target("/v2/models/stats") == (None, None)
    assert path_target("/v2/health/live") == (None, None)


# --- every rule through the app, both ways --------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    """A keys file with one key per scope, a model-limited key and a rate-limited key."""
    path = tmp_path / "keys.json"
    made: dict[str, Any] = {"path": path}
    made["infer"], _ = add_key(path, "inferer", ["infer"])
    made["read"], _ = add_key(path, "reader", ["read"])
    made["admin"], _ = add_key(path, "administrator", ["admin"])
    made["mlp_only"], _ = add_key(path, "mlp-only", ["infer", "read", "admin"], models=["mlp"])
    made["slow"], _ = add_key(path, "slow", ["read"], rate=1.0, burst=2)
    return made


ENDPOINTS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("GET", "/v2", "read", {}),
    ("GET", "/v2/models/mlp", "read", {}),
    ("GET", "/v2/models/mlp/ready", "read", {}),
    ("GET", "/v2/models/mlp/config", "read", {}),
    ("GET", "/v2/models/mlp/versions/1/stats", "read", {}),
    ("GET", "/v2/models/stats", "read", {}),
    ("GET", "/metrics", "read", {}),
    ("GET", "/v2/openapi.json", "read", {}),
    ("POST", "/v2/models/mlp/infer", "infer", mlp_request()),
    ("POST", "/v2/models/mlp/versions/1/infer", "infer", mlp_request()),
    ("POST", "/v2/repository/index", "admin", {}),
    ("POST", "/v2/repository/models/mlp/load", "admin", {}),
]


@pytest.mark.parametrize(
    ("method", "path", "needed", "kwargs"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS]
)
async def test_each_scope_is_needed_and_enough(
    repository: Path,
    keys: dict[str, Any],
    method: str,
    path: str,
    needed: str,
    kwargs: dict[str, Any],
) -> None:
    settings = Settings(repository=repository, api_keys_file=keys["path"])
    async with asgi_app(settings) as (_, client):
        for scope in ("infer", "read", "admin"):
            headers = {**kwargs.get("headers", {}), **bearer(keys[scope])}
            extra = {k: v for k, v in kwargs.items() if k != "headers"}
            answer = await client.request(method, path, headers=headers, **extra)
            if scope == needed:
                assert answer.status_code == 200, (scope, answer.text)
            else:
                assert answer.status_code == 403, (scope, answer.text)
                assert f"{needed!r} scope" in answer.json()["error"]
        answer = await client.request(method, path, **kwargs)
        assert answer.status_code == 401


async def test_missing_wrong_and_malformed_keys_get_401(
    repository: Path, keys: dict[str, Any]
) -> None:
    settings = Settings(repository=repository, api_keys_file=keys["path"])
    async with asgi_app(settings) as (app, client):
        answer = await client.get("/v2")
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == 'Bearer realm="maas"'
        assert "missing API key" in answer.json()["error"]
        answer = await client.get("/v2", headers=bearer("maas_not-a-key"))
        assert answer.status_code == 401
        assert 'error="invalid_token"' in answer.headers["www-authenticate"]
        for value in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer  ", keys["read"]):
            answer = await client.get("/v2", headers={"Authorization": value})
            assert answer.status_code == 401, value
        assert (await client.get("/v2", headers=bearer(keys["read"]))).status_code == 200
        assert app.state.rejections.snapshot()["unauthenticated"] == 6


async def test_health_is_open_by_default_and_can_be_protected(
    repository: Path, keys: dict[str, Any]
) -> None:
    settings = Settings(repository=repository, api_keys_file=keys["path"])
    async with asgi_app(settings) as (_, client):
        assert (await client.get("/v2/health/live")).status_code == 200
        assert (await client.get("/v2/health/ready")).status_code == 200
    async with asgi_app(
        Settings(repository=repository, api_keys_file=keys["path"], open_paths=())
    ) as (_, client):
        assert (await client.get("/v2/health/live")).status_code == 401
        ok = await client.get("/v2/health/live", headers=bearer(keys["read"]))
        assert ok.status_code == 200


async def test_auth_is_off_without_keys(repository: Path) -> None:
    async with asgi_app(Settings(repository=repository)) as (app, client):
        assert app.state.keys is None
        assert (await client.get("/v2/models/mlp")).status_code == 200
        assert (await client.post("/v2/models/mlp/infer", **mlp_request())).status_code == 200


async def test_admin_key_from_settings_may_do_everything(repository: Path) -> None:
    settings = Settings(repository=repository, admin_api_key="secret-admin-key")
    async with asgi_app(settings) as (_, client):
        headers = bearer("secret-admin-key")
        assert (await client.get("/v2/models/mlp", headers=headers)).status_code == 200
        request = mlp_request()
        request["headers"].update(headers)
        assert (await client.post("/v2/models/mlp/infer", **request)).status_code == 200
        index = await client.post("/v2/repository/index", headers=headers)
        assert index.status_code == 200
        assert (await client.get("/v2/models/mlp")).status_code == 401


async def test_model_allow_list(repository: Path, keys: dict[str, Any]) -> None:
    settings = Settings(repository=repository, api_keys_file=keys["path"])
    async with asgi_app(settings, models=("mlp", "add")) as (_, client):
        headers = bearer(keys["mlp_only"])
        request = mlp_request()
        request["headers"].update(headers)
        assert (await client.post("/v2/models/mlp/infer", **request)).status_code == 200
        assert (await client.get("/v2/models/mlp", headers=headers)).status_code == 200
        refused = await client.get("/v2/models/add", headers=headers)
        assert refused.status_code == 403
        assert "may not use model 'add'" in refused.json()["error"]
        assert (await client.get("/v2/models/add/versions/1", headers=headers)).status_code == 403
        load = await client.post("/v2/repository/models/add/load", headers=headers)
        assert load.status_code == 403
        # Lists covering every model show only the allowed ones.
        stats = (await client.get("/v2/models/stats", headers=headers)).json()["model_stats"]
        assert [s["name"] for s in stats] == ["mlp"]
        index = (await client.post("/v2/repository/index", headers=headers)).json()
        assert {row["name"] for row in index} == {"mlp"}
        everything = bearer(keys["read"])
        stats = (await client.get("/v2/models/stats", headers=everything)).json()["model_stats"]
        assert [s["name"] for s in stats] == ["add", "mlp"]
        # /metrics covers every model: not for a model-limited key.
        assert (await client.get("/metrics", headers=headers)).status_code == 403
        assert (await client.get("/metrics", headers=everything)).status_code == 200


async def test_rate_limit_answers_429_with_retry_after(
    repository: Path, keys: dict[str, Any]
) -> None:
    settings = Settings(repository=repository, api_keys_file=keys["path"])
    async with asgi_app(settings) as (app, client):
        headers = bearer(keys["slow"])
        assert (await client.get("/v2", headers=headers)).status_code == 200
        assert (await client.get("/v2", headers=headers)).status_code == 200  # burst 2
        limited = await client.get("/v2", headers=headers)
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "1"
        assert 0 < int(limited.headers["retry-after-ms"]) <= 1000
        assert "over its rate" in limited.json()["error"]
        # Other keys are not affected.
        assert (await client.get("/v2", headers=bearer(keys["read"]))).status_code == 200
        assert app.state.rejections.snapshot()["rate_limited"] == 1


async def _call(app: Any, path: str, key: str) -> tuple[int, dict[bytes, bytes]]:
    """One request straight through an ASGI app: its status and headers."""
    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "headers": [(b"authorization", f"Bearer {key}".encode())],
    }
    start: dict[str, Any] = {}

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)

    await app(scope, receive, send)
    return start["status"], dict(start["headers"])


def _ok_app(release: asyncio.Event | None = None, entered: list[Scope] | None = None) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if entered is not None:
            entered.append(scope)
        if release is not None:
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


async def test_rate_limit_timing_with_a_fake_clock(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key, _ = add_key(path, "metered", ["read"], rate=10.0, burst=5)
    clock = FakeClock()
    access = AccessControl(KeyStore(path, clock=clock), rejections=Rejections())
    middleware = RequestGuard(_ok_app(), access=access)
    statuses = [(await _call(middleware, "/v2", key))[0] for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    status, headers = await _call(middleware, "/v2", key)
    assert status == 429 and headers[b"retry-after-ms"] == b"100"
    clock.advance(0.1)  # one token at 10/s
    assert [(await _call(middleware, "/v2", key))[0] for _ in range(2)] == [200, 429]
    clock.advance(0.35)
    assert [(await _call(middleware, "/v2", key))[0] for _ in range(4)] == [200] * 3 + [429]
    # Over one simulated minute at its limit, the key gets exactly its rate (plus the burst).
    served = 0
    for _ in range(60 * 50):
        clock.advance(0.02)
        served += (await _call(middleware, "/v2", key))[0] == 200
    assert served == pytest.approx(600, abs=1)


async def test_concurrency_quota(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key, _ = add_key(path, "one-at-a-time", ["read"], concurrency=1)
    other, _ = add_key(path, "other", ["read"], concurrency=1)
    release = asyncio.Event()
    entered: list[Scope] = []
    access = AccessControl(KeyStore(path))
    middleware = RequestGuard(_ok_app(release, entered), access=access)
    first = asyncio.create_task(_call(middleware, "/v2", key))
    await until(lambda: len(entered) == 1)  # the first request holds the key's only slot
    # The same key state in front of an app that answers at once.
    status, headers = await _call(RequestGuard(_ok_app(), access=access), "/v2", key)
    assert status == 429 and headers[b"retry-after"] == b"1"
    other_task = asyncio.create_task(_call(middleware, "/v2", other))  # its own quota
    await until(lambda: len(entered) == 2)  # admitted while the first one is still held
    assert not first.done()
    release.set()
    assert (await first)[0] == 200 and (await other_task)[0] == 200
    assert (await _call(middleware, "/v2", key))[0] == 200  # the slot was given back


async def test_require_model_access_for_body_routes(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key, _ = add_key(path, "gpt-only", ["infer"], models=["gpt"])
    store = KeyStore(path)
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        try:
            require_model_access(request, scope["query_string"].decode())
            seen["ok"] = True
        except ForbiddenError as exc:
            seen["error"] = exc
        seen["model"] = scope[SCOPE_MODEL]
        await _ok_app()(scope, receive, send)

    middleware = RequestGuard(app, access=AccessControl(store))
    for model, allowed in (("gpt", True), ("mlp", False)):
        seen.clear()
        scope: Scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/completions",
            "query_string": model.encode(),
            "headers": [(b"authorization", f"Bearer {key}".encode())],
        }

        async def receive() -> Message:
            return {"type": "http.request", "body": b""}

        async def send(message: Message) -> None:
            return None

        await middleware(scope, receive, send)
        assert ("ok" in seen) is allowed
        assert seen["model"] == model
        if not allowed:
            assert seen["error"].status_code == 403
    # Without access control every model is allowed.
    bare: Scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}
    require_model_access(Request(bare), "anything")


# --- rotation against a real server ---------------------------------------------------------


def test_key_rotation_while_serving(repository: Path, tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    steady, _ = add_key(path, "steady", ["infer", "read"])
    old, _ = add_key(path, "old", ["read"])
    settings = Settings(
        repository=repository,
        api_keys_file=path,
        keys_reload_interval_s=0.05,
        strict_readiness=False,
    )
    running = start_server(settings)
    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        request = mlp_request()
        request["headers"].update(bearer(steady))
        with httpx.Client(base_url=running.url, timeout=10) as client:
            while not stop.is_set():
                statuses.append(client.post("/v2/models/mlp/infer", **request).status_code)

    worker = threading.Thread(target=hammer)
    try:
        with httpx.Client(base_url=running.url, timeout=10) as client:
            worker.start()
            assert client.get("/v2", headers=bearer(old)).status_code == 200
            new, _ = add_key(path, "new", ["read"])
            revoke_key(path, "old")
            wait_for(lambda: client.get("/v2", headers=bearer(new)).status_code == 200)
            assert client.get("/v2", headers=bearer(old)).status_code == 401
            # A change of scopes applies too, without a restart.
            entries = [
                KeyEntry(e.name, e.hash, ("infer",)) if e.name == "new" else e
                for e in read_keys(path)
            ]
            write_keys(path, entries)
            wait_for(lambda: client.get("/v2", headers=bearer(new)).status_code == 403)
            served = len(statuses)
            wait_for(lambda: len(statuses) >= served + 20)
    finally:
        stop.set()
        worker.join(timeout=30)
        running.stop()
    assert set(statuses) == {200}, "the steady key was refused during the rotation"


# --- the command line --------------------------------------------------------------------------


def test_keys_cli_create_list_revoke(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    runner = CliRunner()
    created = runner.invoke(
        cli_app,
        ["keys", "create", "--name", "ci", "--scopes", "infer,read", "--models", "a,b",
         "--rate", "120/m", "--burst", "4", "--concurrency", "3", "--file", str(path)],
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[0]
    assert key.startswith("maas_")
    (entry,) = read_keys(path)
    assert entry.hash == hash_key(key)
    assert entry.models == ("a", "b") and entry.rate == 2.0 and entry.burst == 4
    assert entry.concurrency == 3

    listed = runner.invoke(cli_app, ["keys", "list", "--file", str(path)])
    assert listed.exit_code == 0
    assert "ci" in listed.stdout and "models=a,b" in listed.stdout and key not in listed.stdout
    as_json = runner.invoke(cli_app, ["keys", "list", "--json", "--file", str(path)])
    (row,) = json.loads(as_json.stdout)
    assert row["name"] == "ci" and "hash" not in row

    duplicate = runner.invoke(cli_app, ["keys", "create", "--name", "ci", "-f", str(path)])
    assert duplicate.exit_code == 1 and "already exists" in duplicate.output
    bad = runner.invoke(
        cli_app, ["keys", "create", "--name", "x", "--scopes", "root", "-f", str(path)]
    )
    assert bad.exit_code == 1 and "scopes" in bad.output
    bad_rate = runner.invoke(
        cli_app, ["keys", "create", "--name", "x", "--rate", "lots", "-f", str(path)]
    )
    assert bad_rate.exit_code == 1

    revoked = runner.invoke(cli_app, ["keys", "revoke", "ci", "--file", str(path)])
    assert revoked.exit_code == 0 and read_keys(path) == []
    again = runner.invoke(cli_app, ["keys", "revoke", "ci", "--file", str(path)])
    assert again.exit_code == 1


def test_keys_cli_needs_neither_onnxruntime_nor_starlette(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from maas_cli import app\n"
        f"result = CliRunner().invoke(app, ['keys', 'create', '--name', 'x', '-f', {str(tmp_path / 'k.json')!r}])\n"  # noqa: E501
        "assert result.exit_code == 0, result.output\n"
        "heavy = [m for m in ('onnxruntime', 'starlette') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
