"""A keys file that cannot be used never breaks the keys that work: while serving, the previous
keys stay (the log says why, once per version of the file); at start, ``maas serve`` refuses to
run with a clear message instead of serving without keys."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maas_cli import app as cli_app
from maas_server import Settings
from maas_server.auth import KeyStore
from maas_server.keys_file import KeysFileError, add_key, hash_key, read_keys
from tests.server.apps import asgi_app, bearer, mlp_request

BAD_FILES: dict[str, bytes] = {
    "infinite rate": (
        b'{"keys": [{"name": "x", "hash": "sha256:' + b"0" * 64 + b'", "scopes": ["read"], '
        b'"rate": 1e999}]}'
    ),
    "huge concurrency": (
        b'{"keys": [{"name": "x", "hash": "sha256:' + b"0" * 64 + b'", "scopes": ["read"], '
        b'"concurrency": 1' + b"0" * 5000 + b"}]}"
    ),
    "not UTF-8": b'{"keys": [{"name": "caf\xe9"}]}',
    "deep nesting": b'{"keys": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}
REASONS = {
    "infinite rate": "'rate' must be null or a positive float",
    "huge concurrency": "not valid JSON",
    "not UTF-8": "is not UTF-8 text",
    "deep nesting": "not valid JSON",
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_read_keys_names_what_is_wrong(tmp_path: Path, name: str) -> None:
    path = tmp_path / "keys.json"
    path.write_bytes(BAD_FILES[name])
    with pytest.raises(KeysFileError, match=REASONS[name]):
        read_keys(path)


@pytest.mark.parametrize("name", list(BAD_FILES))
async def test_a_bad_reload_keeps_the_previous_keys(
    repository: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    path = tmp_path / "keys.json"
    key, _ = add_key(path, "ci", ["infer", "read"])
    settings = Settings(
        repository=repository,
        api_keys_file=path,
        admin_api_key="admin-secret",
        keys_reload_interval_s=0.0,  # look at the file on every request
    )
    async with asgi_app(settings) as (app, client):
        assert (await client.get("/v2/models/mlp", headers=bearer(key))).status_code == 200
        path.write_bytes(BAD_FILES[name])
        with caplog.at_level(logging.ERROR, logger="maas_server"):
            for _ in range(3):
                answer = await client.get("/v2/models/mlp", headers=bearer(key))
                assert answer.status_code == 200, answer.text
            admin = await client.post("/v2/repository/index", headers=bearer("admin-secret"))
            assert admin.status_code == 200, admin.text
            assert (await client.get("/v2/models/mlp")).status_code == 401
        logged = [r.getMessage() for r in caplog.records if "not reloaded" in r.getMessage()]
        assert len(logged) == 1, logged  # once for this version of the file, not per request
        assert "keeping the previous 2 key(s)" in logged[0] and REASONS[name] in logged[0]
        # A good file is taken again.
        path.unlink()
        other, _ = add_key(path, "other", ["infer"])
        request = mlp_request()
        request["headers"].update(bearer(other))
        assert (await client.post("/v2/models/mlp/infer", **request)).status_code == 200
        assert (await client.get("/v2/models/mlp", headers=bearer(key))).status_code == 401
        assert app.state.keys.names == ["admin", "other"]


def test_limits_are_finite_and_bounded(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    entry = '{"name": "x", "hash": "%s", "scopes": ["read"], %s}'
    for field in ('"rate": NaN', '"rate": -Infinity', '"burst": 1e10', '"concurrency": 0'):
        path.write_text('{"keys": [%s]}' % (entry % (hash_key("k"), field)))
        with pytest.raises(KeysFileError):
            read_keys(path)
    path.write_text('{"keys": [%s]}' % (entry % (hash_key("k"), '"rate": 1e9, "burst": 5')))
    store = KeyStore(path)
    found = store.lookup("k")
    assert found is not None and found.bucket is not None and found.bucket.take() == 0.0


def test_maas_serve_refuses_to_start_on_a_bad_keys_file(tmp_path: Path) -> None:
    """At start there are no previous keys to keep: serving without them would open every
    endpoint, so ``maas serve`` stops with the reason (exit status 2), not a traceback."""
    (tmp_path / "models").mkdir()
    path = tmp_path / "keys.json"
    path.write_bytes(BAD_FILES["infinite rate"])
    result = CliRunner().invoke(
        cli_app,
        ["serve", str(tmp_path / "models"), "--api-keys-file", str(path), "--access-log", "off"],
    )
    assert result.exit_code == 2, result.output
    assert "maas serve: cannot start:" in result.output
    assert REASONS["infinite rate"] in result.output
    assert "Traceback" not in result.output
