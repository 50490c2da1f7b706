"""The lifecycle of published versions: the versions list with provenance (kept in SQLite across
restarts), the default version (rollout and rollback in one call each), deletion (refused while
it is all a model serves unless forced), the admin scope and per-key upload limits."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from maas_server import Settings
from maas_server.keys_file import KeyEntry, KeysFileError, generate_key, hash_key, read_keys
from tests import models
from tests.server.apps import asgi_app, bearer
from tests.server.publishing import assert_serves, infer_mlp, mlp_bytes, publish_repository

ONNX = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return publish_repository(tmp_path / "repo")


async def test_versions_list_provenance_and_default_survive_a_restart(repo: Path) -> None:
    body = mlp_bytes(2)
    async with asgi_app(Settings(repository=repo)) as (_, client):
        answer = await client.post(
            "/v2/repository/models/mlp/versions",
            content=body,
            headers={**ONNX, "X-Maas-Metadata": json.dumps({"framework": "sklearn", "run": 7})},
        )
        assert answer.status_code == 201, answer.text
        failed = await client.post(
            "/v2/repository/models/mlp/versions", content=b"not onnx", headers=ONNX
        )
        assert failed.status_code == 400
        rollback = await client.put("/v2/repository/models/mlp/default", json={"version": "1"})
        assert rollback.status_code == 200, rollback.text
        assert_serves(*await infer_mlp(client), seed=1, expected_version="1")
    # a new server on the same repository
    async with asgi_app(Settings(repository=repo)) as (_, client):
        assert_serves(*await infer_mlp(client), seed=1, expected_version="1")
        listed = (await client.get("/v2/repository/models/mlp/versions")).json()
        assert listed["default"] == "1" and listed["serving"] == "1"
        one, two = listed["versions"]
        assert one["version"] == "1" and one["state"] == "READY" and one["default"]
        assert one["sha256"] is None and one["size"] == (repo / "mlp/1/model.onnx").stat().st_size
        assert two["version"] == "2" and two["state"] == "READY" and not two["default"]
        assert two["sha256"] == hashlib.sha256(body).hexdigest() and two["size"] == len(body)
        assert two["framework"] == "sklearn" and two["metadata"] == {"run": 7}
        assert two["key_name"] is None and two["created"].endswith("Z")
        (attempt,) = listed["failed_attempts"]
        assert attempt["status"] == 400 and "does not load" in attempt["reason"]
        # rollout again: one call
        rollout = await client.put("/v2/repository/models/mlp/default", json={"version": 2})
        assert rollout.json()["serving"] == "2"
        assert_serves(*await infer_mlp(client), seed=2, expected_version="2")
    with sqlite3.connect(repo / ".maas" / "index.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_a_default_that_does_not_load_changes_nothing(repo: Path) -> None:
    async with asgi_app(Settings(repository=repo)) as (_, client):
        models.save(models.mlp_model(seed=2), repo / "mlp" / "2" / "model.onnx")
        (repo / "mlp" / "3").mkdir()
        (repo / "mlp" / "3" / "model.onnx").write_bytes(models.corrupt_model_bytes())
        bad = await client.put("/v2/repository/models/mlp/default", json={"version": "3"})
        assert bad.status_code == 400 and "cannot be the default" in bad.json()["error"]
        missing = await client.put("/v2/repository/models/mlp/default", json={"version": "9"})
        assert missing.status_code == 404
        malformed = await client.put("/v2/repository/models/mlp/default", json={"v": "2"})
        assert malformed.status_code == 400
        assert_serves(*await infer_mlp(client), seed=1, expected_version="1")
        good = await client.put("/v2/repository/models/mlp/default", json={"version": "2"})
        assert good.status_code == 200, good.text
        assert_serves(*await infer_mlp(client), seed=2, expected_version="2")


async def test_delete_versions_and_models(repo: Path) -> None:
    async with asgi_app(Settings(repository=repo)) as (_, client):
        only = await client.delete("/v2/repository/models/mlp/versions/1")
        assert only.status_code == 409 and "only version" in only.json()["error"]
        assert_serves(*await infer_mlp(client), seed=1, expected_version="1")
        await client.post("/v2/repository/models/mlp/versions", content=mlp_bytes(2))
        old = await client.delete("/v2/repository/models/mlp/versions/1")
        assert old.status_code == 200, old.text
        assert [v["version"] for v in old.json()["versions"]] == ["2"]
        assert not (repo / "mlp" / "1").exists()
        assert_serves(*await infer_mlp(client), seed=2, expected_version="2")
        assert (await client.delete("/v2/repository/models/mlp/versions/7")).status_code == 404
        serving = await client.delete("/v2/repository/models/mlp")
        assert serving.status_code == 409
        assert_serves(*await infer_mlp(client), seed=2, expected_version="2")
        await client.post("/v2/repository/models/mlp/unload")
        last = await client.delete("/v2/repository/models/mlp/versions/2")
        assert last.status_code == 409 and "last version" in last.json()["error"]
        unloaded = await client.delete("/v2/repository/models/mlp")
        assert unloaded.status_code == 409 and "needs force=true" in unloaded.json()["error"]
        assert (repo / "mlp" / "2" / "model.onnx").is_file()
        await client.post("/v2/repository/models/mlp/load")
        forced = await client.delete("/v2/repository/models/mlp/versions/2?force=true")
        assert forced.status_code == 200
        assert (await client.post("/v2/models/mlp/infer", json={})).status_code == 503
        gone = await client.delete("/v2/repository/models/mlp")  # nothing left to confirm
        assert gone.status_code == 200
        assert not (repo / "mlp").exists()
        assert (await client.get("/v2/models/mlp")).status_code == 404
        index = (await client.post("/v2/repository/index")).json()
        assert all(row["name"] != "mlp" for row in index)


def _keys(path: Path, **limits: int | None) -> dict[str, str]:
    keys = {}
    entries = []
    for name, scopes in (("ci", ["admin"]), ("big", ["admin"]), ("reader", ["read", "infer"])):
        key = generate_key()
        keys[name] = key
        entries.append(
            {
                "name": name,
                "hash": hash_key(key),
                "scopes": scopes,
                "max_upload_bytes": limits.get(name),
            }
        )
    path.write_text(json.dumps({"keys": entries}))
    return keys


async def test_admin_scope_and_per_key_upload_limits(repo: Path, tmp_path: Path) -> None:
    body = mlp_bytes(2)
    keys = _keys(tmp_path / "keys.json", ci=len(body) - 1)
    settings = Settings(repository=repo, api_keys_file=tmp_path / "keys.json")
    async with asgi_app(settings) as (_, client):
        url = "/v2/repository/models/mlp/versions"
        assert (await client.post(url, content=body)).status_code == 401
        for method in ("POST", "GET"):
            refused = await client.request(
                method, url, content=body, headers=bearer(keys["reader"])
            )
            assert refused.status_code == 403 and "admin" in refused.json()["error"]
        assert (
            await client.put(
                "/v2/repository/models/mlp/default",
                json={"version": "1"},
                headers=bearer(keys["reader"]),
            )
        ).status_code == 403
        assert (
            await client.delete("/v2/repository/models/mlp", headers=bearer(keys["reader"]))
        ).status_code == 403
        over = await client.post(url, content=body, headers=bearer(keys["ci"]))
        assert over.status_code == 413
        ok = await client.post(url, content=body, headers=bearer(keys["big"]))
        assert ok.status_code == 201, ok.text
        listed = (await client.get(url, headers=bearer(keys["ci"]))).json()
        assert listed["versions"][-1]["key_name"] == "big"
        assert listed["failed_attempts"][0]["key_name"] == "ci"
        assert listed["failed_attempts"][0]["status"] == 413


@pytest.mark.parametrize("value", [-1, 0, "1000", 1.5, True, 1 << 51])
def test_keys_file_max_upload_bytes_is_checked(tmp_path: Path, value: object) -> None:
    path = tmp_path / "keys.json"
    entry = {"name": "ci", "hash": hash_key(generate_key()), "scopes": ["admin"]}
    path.write_text(json.dumps({"keys": [{**entry, "max_upload_bytes": value}]}))
    with pytest.raises(KeysFileError, match="'max_upload_bytes' must be null or a positive int"):
        read_keys(path)
    path.write_text(json.dumps({"keys": [{**entry, "max_upload_bytes": 1 << 30}]}))
    (read,) = read_keys(path)
    assert read == KeyEntry(**{**entry, "scopes": ("admin",), "max_upload_bytes": 1 << 30})
    assert read.to_json()["max_upload_bytes"] == 1 << 30
