"""Training jobs through the server's HTTP API: the classic 8x8 digits example end to end, a
regression and a table with text and missing values trained and served raw, each bad input a
400 at create time, cancel within one epoch, divergence failing the job, provenance."""

from __future__ import annotations

import asyncio
import csv
import io
import math
import os
import pickle
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager
from sklearn.datasets import load_diabetes, load_digits
from starlette.applications import Starlette

from maas_server import Settings, create_app
from maas_server.jobs import JobRunner
from maas_server.train_engine import ESTIMATOR_FILE
from maas_server.train_preprocess import feature_matrix, plan_features
from maas_server.training_job import ARTIFACTS_DIR, TrainingKind
from maas_wire.jobs import JobEvent, JobInfo
from tests.waiting import DEADLINE_S, until

pytestmark = pytest.mark.asyncio

TERMINAL = ("succeeded", "failed", "cancelled")


@asynccontextmanager
async def training_app(
    tmp_path: Path, **settings: Any
) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    repository = tmp_path / "models"
    repository.mkdir(exist_ok=True)
    # nice 0: at the default 19 a training crawls when the tests share a busy machine
    base = Settings(
        repository=repository,
        data_dir=tmp_path / "data",
        keep_training_artifacts=True,
        training_nice=0,
    )
    app = create_app(replace(base, **settings))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://maas.test"
        ) as client,
    ):
        yield app, client


async def upload_npz(client: httpx.AsyncClient, name: str, **arrays: Any) -> dict[str, Any]:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    answer = await client.post(f"/v2/datasets/{name}?format=npz", content=buffer.getvalue())
    assert answer.status_code == 201, answer.text
    info: dict[str, Any] = answer.json()
    return info


async def upload_csv(
    client: httpx.AsyncClient, name: str, header: list[str], rows: list[list[Any]]
) -> dict[str, Any]:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    answer = await client.post(f"/v2/datasets/{name}?format=csv", content=text.getvalue())
    assert answer.status_code == 201, answer.text
    info: dict[str, Any] = answer.json()
    return info


async def create(client: httpx.AsyncClient, **spec: Any) -> str:
    answer = await client.post("/v2/jobs", json={"type": "training", **spec})
    assert answer.status_code == 201, answer.text
    job_id: str = answer.json()["id"]
    return job_id


async def finished(
    client: httpx.AsyncClient, job_id: str, headers: dict[str, str] | None = None
) -> JobInfo:
    """The job once it is over (polling its state, with the tests' deadline)."""
    info: JobInfo | None = None

    async def over() -> bool:
        nonlocal info
        answer = await client.get(f"/v2/jobs/{job_id}", headers=headers)
        info = JobInfo.model_validate(answer.json())
        return info.state in TERMINAL

    loop_deadline = asyncio.get_running_loop().time() + 4 * DEADLINE_S
    while not await over():
        assert asyncio.get_running_loop().time() < loop_deadline, f"job {job_id}: {info}"
        await asyncio.sleep(0.02)
    assert info is not None
    return info


def events(app: Starlette, job_id: str, type_: str | None = None) -> list[JobEvent]:
    runner: JobRunner = app.state.jobs
    found = runner.store.events(job_id)
    return [e for e in found if type_ is None or e.type == type_]


def kept_estimator(tmp_path: Path, job_id: str) -> dict[str, Any]:
    with (tmp_path / "data" / ARTIFACTS_DIR / job_id / ESTIMATOR_FILE).open("rb") as source:
        kept: dict[str, Any] = pickle.load(source)
    return kept


async def infer(
    client: httpx.AsyncClient, model: str, inputs: list[dict[str, Any]]
) -> dict[str, np.ndarray[Any, Any]]:
    answer = await client.post(f"/v2/models/{model}/infer", json={"inputs": inputs})
    assert answer.status_code == 200, answer.text
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in answer.json()["outputs"]}


# --- the classic example --------------------------------------------------------------------------


async def test_digits_default_mlp_end_to_end(tmp_path: Path) -> None:
    """8x8 digits uploaded as a dataset, the default MLP (128, 64, ReLU, softmax, Adam) trained
    as a job: >= 95% held-out accuracy, and the served model answers the test split exactly
    as the trained estimator does."""
    digits = load_digits()
    images = digits.images.astype(np.float32)
    async with training_app(tmp_path) as (app, client):
        dataset = await upload_npz(client, "digits", image=images, digit=digits.target)
        job_id = await create(client, dataset="digits", target="digit", name="digits")
        info = await finished(client, job_id)
        assert info.state == "succeeded", info.error
        assert info.progress.unit == "epochs"

        result = info.result
        assert result is not None
        assert result["model"] == "digits" and result["version"] == 1
        assert result["metrics"]["accuracy"] >= 0.95
        assert result["rows"]["test"] == 360
        # it ran at the server's --training-nice (0 here: no change from this process)
        assert result["process"]["nice"] == os.nice(0)

        epochs = events(app, job_id, "epoch")
        assert [e.data["epoch"] for e in epochs] == list(range(1, len(epochs) + 1))
        for event in epochs:
            assert set(event.data) >= {"epoch", "train_loss", "val_loss", "val_metric", "elapsed_s"}
        (metrics,) = events(app, job_id, "metrics")
        matrix = np.array(metrics.data["metrics"]["confusion_matrix"]["matrix"])
        assert matrix.shape == (10, 10) and matrix.trace() / matrix.sum() >= 0.95

        metadata = (await client.get("/v2/models/digits")).json()
        assert metadata["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 8, 8]}]
        assert [o["name"] for o in metadata["outputs"]] == ["label", "probabilities"]

        kept = kept_estimator(tmp_path, job_id)
        rows = kept["test_rows"]
        assert len(rows) == 360
        served = await infer(
            client,
            "digits",
            [
                {
                    "name": "image",
                    "datatype": "FP32",
                    "shape": [len(rows), 8, 8],
                    "data": images[rows].ravel().tolist(),
                }
            ],
        )
        x = images[rows].reshape(len(rows), 64).astype(np.float64)
        assert served["label"].tolist() == kept["estimator"].predict(x).tolist()
        np.testing.assert_allclose(
            served["probabilities"], kept["estimator"].predict_proba(x), atol=1e-5
        )

        # provenance: the dataset and its sha256, parameters, metrics, seed, engine + version
        versions = (await client.get("/v2/repository/models/digits/versions")).json()
        (version,) = versions["versions"]
        assert version["framework"] == "scikit-learn"
        training = version["metadata"]["training"]
        assert training["dataset"] == {"name": "digits", "version": 1, "sha256": dataset["sha256"]}
        assert training["parameters"]["hidden_layers"] == [128, 64]
        assert training["parameters"]["activation"] == "relu"
        assert training["seed"] == 0
        assert training["metrics"]["accuracy"] == result["metrics"]["accuracy"]
        assert training["engine"] == "scikit-learn" and training["engine_version"]
        assert training["job"] == job_id


async def test_a_second_training_publishes_the_next_version(tmp_path: Path) -> None:
    digits = load_digits()
    async with training_app(tmp_path) as (_, client):
        await upload_npz(client, "digits", image=digits.images, digit=digits.target)
        for version in (1, 2):
            job_id = await create(
                client, dataset="digits", target="digit", name="digits", model="linear"
            )
            info = await finished(client, job_id)
            assert info.state == "succeeded", info.error
            assert info.result is not None and info.result["version"] == version
        listing = (await client.get("/v2/repository/models/digits/versions")).json()
        assert listing["default"] == "2"


# --- trained and served raw ---------------------------------------------------------------------


async def test_regression_trained_and_served_raw(tmp_path: Path) -> None:
    diabetes = load_diabetes()
    names = list(diabetes.feature_names)
    header = [*names, "progression"]
    rows = [[*map(float, x), float(y)] for x, y in zip(diabetes.data, diabetes.target, strict=True)]
    async with training_app(tmp_path) as (app, client):
        await upload_csv(client, "diabetes", header, rows)
        job_id = await create(
            client,
            dataset="diabetes",
            target="progression",
            name="diabetes",
            hidden_layers=[32],
            epochs=10,
        )
        info = await finished(client, job_id)
        assert info.state == "succeeded", info.error
        assert info.result is not None and info.spec["task"] == "regression"
        assert set(info.result["metrics"]) >= {"rmse", "mae", "r2"}
        assert events(app, job_id, "epoch")[0].data["metric"] == "r2"

        metadata = (await client.get("/v2/models/diabetes")).json()
        assert [i["name"] for i in metadata["inputs"]] == names
        kept = kept_estimator(tmp_path, job_id)
        test = kept["test_rows"]
        served = await infer(
            client,
            "diabetes",
            [
                {
                    "name": n,
                    "datatype": "FP32",
                    "shape": [len(test)],
                    "data": diabetes.data[test, i].tolist(),
                }
                for i, n in enumerate(names)
            ],
        )
        mean, std = kept["target_scale"]
        expected = kept["estimator"].predict(diabetes.data[test]) * std + mean
        np.testing.assert_allclose(served["prediction"], expected, rtol=1e-4)


def _customers(rows: int = 240) -> tuple[list[str], list[list[Any]]]:
    """A table with a text column, missing numbers and missing text, and a text target."""
    rng = np.random.default_rng(3)
    out = []
    for _ in range(rows):
        age = float(rng.normal(40, 12))
        plan = str(rng.choice(["basic", "plus", "pro"]))
        visits = int(rng.integers(0, 10))
        score = age / 10 + {"basic": 0, "plus": 2, "pro": 4}[plan] + visits / 2
        label = "churned" if score < 8 else "stayed"
        if rng.random() < 0.1:
            age = math.nan
        if rng.random() < 0.1:
            plan = ""
        out.append(["" if math.isnan(age) else round(age, 1), plan, visits, label])
    return ["age", "plan", "visits", "status"], out


async def test_table_with_text_and_missing_values_trained_and_served_raw(tmp_path: Path) -> None:
    header, rows = _customers()
    async with training_app(tmp_path) as (_, client):
        await upload_csv(client, "customers", header, rows)
        job_id = await create(client, dataset="customers", target="status", name="churn", epochs=15)
        info = await finished(client, job_id)
        assert info.state == "succeeded", info.error
        assert info.result is not None
        assert info.result["metrics"]["accuracy"] > 0.7
        metadata = (await client.get("/v2/models/churn")).json()
        assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == [
            ("age", "FP32"),
            ("plan", "BYTES"),
            ("visits", "INT64"),
        ]
        assert metadata["outputs"][0] == {"name": "label", "datatype": "BYTES", "shape": [-1]}

        kept = kept_estimator(tmp_path, job_id)
        test = kept["test_rows"]
        ages = [math.nan if rows[r][0] == "" else float(rows[r][0]) for r in test]
        plans = [rows[r][1] for r in test]
        visits = [int(rows[r][2]) for r in test]
        served = await infer(
            client,
            "churn",
            [
                # JSON has no NaN: ages go as 0.0 here (NaN: see the binary test below)
                {
                    "name": "age",
                    "datatype": "FP32",
                    "shape": [len(test)],
                    "data": [0.0] * len(test),
                },
                {"name": "plan", "datatype": "BYTES", "shape": [len(test)], "data": plans},
                {"name": "visits", "datatype": "INT64", "shape": [len(test)], "data": visits},
            ],
        )
        assert served["label"].shape == (len(test),)
        features = plan_features(
            [
                ("age", "FP64", []),
                ("plan", "BYTES", []),
                ("visits", "INT64", []),
                ("status", "BYTES", []),
            ],
            "status",
        )
        columns = {
            "age": np.zeros(len(test)),
            "plan": np.array(plans, dtype=object),
            "visits": np.array(visits),
        }
        x = feature_matrix(columns, features)
        assert served["label"].tolist() == kept["estimator"].predict(x).tolist()
        assert any(math.isnan(a) for a in ages) and "" in plans  # the split holds missing values


async def test_missing_numbers_sent_as_nan_are_imputed(tmp_path: Path) -> None:
    """A NaN (binary tensor data, through the client) is replaced by the training split's
    median inside the graph: it answers as the median itself does."""
    from maas_client import AsyncClient

    header, rows = _customers()
    async with training_app(tmp_path) as (_, client):
        await upload_csv(client, "customers", header, rows)
        job_id = await create(client, dataset="customers", target="status", name="churn", epochs=5)
        info = await finished(client, job_id)
        assert info.state == "succeeded", info.error
        kept = kept_estimator(tmp_path, job_id)
        numeric = kept["estimator"].named_steps["preprocess"].named_transformers_["numeric"]
        median = float(numeric.named_steps["impute"].statistics_[0])  # age, the first numeric
        async with AsyncClient("http://maas.test", http_client=client) as maas:
            result = await maas.infer(
                "churn",
                {
                    "age": np.array([math.nan, median, median + 30], dtype=np.float32),
                    "plan": np.array(["pro", "pro", "pro"], dtype=object),
                    "visits": np.array([3, 3, 3], dtype=np.int64),
                },
            )
        probabilities = result["probabilities"]
        np.testing.assert_allclose(probabilities[0], probabilities[1], atol=1e-6)
        assert not np.allclose(probabilities[0], probabilities[2], atol=1e-3)


# --- bad input ----------------------------------------------------------------------------------


BAD_SPECS = [
    ({"target": "colour"}, "target column 'colour' is not in the dataset"),
    ({"target": "constant"}, "target column 'constant' has one class"),
    ({"target": "y", "features": ["tags"]}, "column 'tags' holds arrays of text"),
    ({"target": "y", "features": ["x", "user"]}, "'user' has 60 distinct text values"),
    ({"target": "y", "features": ["x", "nope"]}, "feature column 'nope' is not in the dataset"),
    ({"target": "y", "validation_split": 0.01}, "too few for a validation split of 0.01"),
    ({"target": "y", "epochs": 0}, "'epochs' must be between 1 and 10000, not 0"),
    ({"target": "y", "learning_rate": -1}, "'learning_rate' must be greater than 0"),
    ({"target": "y", "hidden_layers": [64, 0]}, "widths must be between 1 and 65536, not 0"),
    ({"target": "y", "batch_size": 0}, "'batch_size' must be between 1 and 1000000"),
    ({"target": "y", "task": "clustering"}, "'task' must be one of classification, regression"),
    ({"target": "y", "name": "no/slash"}, "invalid model name 'no/slash'"),
    ({"target": "y", "dropout": 0.5}, "unknown training parameter 'dropout'"),
    ({"target": "user", "task": "regression"}, "holds text, which a regression cannot predict"),
    ({"target": "x", "features": ["y"], "task": "classification"}, "holds fractional numbers"),
]


async def test_bad_input_is_a_400_naming_the_problem(tmp_path: Path) -> None:
    rows = 60
    rng = np.random.default_rng(0)
    async with training_app(tmp_path) as (_, client):
        await upload_npz(
            client,
            "table",
            x=rng.normal(size=rows),
            y=np.arange(rows) % 2,
            constant=np.ones(rows, dtype=np.int64),
            user=np.array([f"user-{i}" for i in range(rows)]),
            tags=np.array([["a", "b"]] * rows),
        )
        for spec, message in BAD_SPECS:
            body = {
                "type": "training",
                "dataset": "table",
                "name": "m",
                "features": ["x"],
                "max_categories": 50,
            }
            body.update(spec)
            answer = await client.post("/v2/jobs", json=body)
            assert answer.status_code == 400, (spec, answer.text)
            assert message in answer.json()["error"], (spec, answer.text)
        answer = await client.post(
            "/v2/jobs", json={"type": "training", "dataset": "nothing", "target": "y", "name": "m"}
        )
        assert answer.status_code == 404 and "no dataset named 'nothing'" in answer.text
        listed = (await client.get("/v2/jobs")).json()["jobs"]
        assert listed == []  # nothing was queued


# --- cancel, divergence, restart policy ----------------------------------------------------------


async def test_cancel_stops_within_one_epoch(tmp_path: Path) -> None:
    digits = load_digits()
    async with training_app(tmp_path) as (app, client):
        await upload_npz(client, "digits", image=digits.images, digit=digits.target)
        # one row per step: each epoch takes a while, so the job is mid-training when cancelled
        job_id = await create(
            client,
            dataset="digits",
            target="digit",
            name="digits",
            batch_size=1,
            epochs=1000,
            early_stopping=False,
        )
        await until(lambda: len(events(app, job_id, "epoch")) >= 1, timeout=4 * DEADLINE_S)
        answer = await client.post(f"/v2/jobs/{job_id}/cancel")
        assert answer.status_code == 200, answer.text
        at_cancel = max(e.data["epoch"] for e in events(app, job_id, "epoch"))
        info = await finished(client, job_id)
        assert info.state == "cancelled"
        last = max(e.data["epoch"] for e in events(app, job_id, "epoch"))
        assert last <= at_cancel + 1  # the epoch under way, no more
        versions = await client.get("/v2/repository/models/digits/versions")
        assert versions.status_code == 404  # nothing published


async def test_divergence_fails_the_job_with_that_reason(tmp_path: Path) -> None:
    diabetes = load_diabetes()
    async with training_app(tmp_path) as (_, client):
        await upload_npz(client, "diabetes", x=diabetes.data, y=diabetes.target)
        job_id = await create(
            client,
            dataset="diabetes",
            target="y",
            name="diverged",
            optimizer="sgd",
            learning_rate=10.0,
            epochs=50,
        )
        info = await finished(client, job_id)
        assert info.state == "failed"
        assert info.error is not None and "training diverged" in info.error
        assert "not finite" in info.error
        versions = await client.get("/v2/repository/models/diverged/versions")
        assert versions.status_code == 404


async def test_restart_policy_follows_the_spec() -> None:
    kind = TrainingKind.__new__(TrainingKind)
    job = JobInfo(id="1", type="training", state="running", created="now", spec={})
    assert kind.on_restart(job) == "fail"
    job.spec["on_restart"] = "restart"
    assert kind.on_restart(job) == "restart"


async def test_keys_train_on_their_own_datasets_and_models(tmp_path: Path) -> None:
    """With API keys: a training reads only the key's datasets (another key's is a 404, as
    its routes say) and publishes only new models or the key's own (403 otherwise)."""
    from maas_server.keys_file import add_key

    keys = tmp_path / "keys.json"
    alice, _ = add_key(keys, "alice", ["jobs", "read", "infer"])
    bob, _ = add_key(keys, "bob", ["jobs", "read", "infer"])
    digits = load_digits()
    buffer = io.BytesIO()
    np.savez(buffer, image=digits.images, digit=digits.target)
    async with training_app(tmp_path, api_keys_file=keys) as (_, client):
        for key in (alice, bob):
            answer = await client.post(
                "/v2/datasets/digits?format=npz",
                content=buffer.getvalue(),
                headers={"Authorization": f"Bearer {key}"},
            )
            assert answer.status_code == 201, answer.text
        body = {
            "type": "training",
            "dataset": "digits",
            "dataset_version": 1,  # alice's
            "target": "digit",
            "name": "alices",
            "model": "linear",
        }
        as_bob = {"Authorization": f"Bearer {bob}"}
        as_alice = {"Authorization": f"Bearer {alice}"}
        refused = await client.post("/v2/jobs", json=body, headers=as_bob)
        assert refused.status_code == 404 and "no dataset named 'digits'" in refused.text
        made = await client.post("/v2/jobs", json=body, headers=as_alice)
        assert made.status_code == 201, made.text
        info = await finished(client, made.json()["id"], as_alice)
        assert info.state == "succeeded", info.error
        taken = await client.post("/v2/jobs", json={**body, "dataset_version": 2}, headers=as_bob)
        assert taken.status_code == 403, taken.text
        assert "model 'alices' has versions that key 'bob' did not publish" in taken.text
        again = await client.post("/v2/jobs", json=body, headers=as_alice)
        assert again.status_code == 201, again.text  # her own model: its next version


async def test_torch_engine_as_a_job(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="the torch engine needs PyTorch: pip install 'maas[torch]'")
    digits = load_digits()
    images = digits.images.astype(np.float32)
    async with training_app(tmp_path) as (_, client):
        await upload_npz(client, "digits", image=images, digit=digits.target)
        job_id = await create(
            client, dataset="digits", target="digit", name="torch-digits", engine="torch"
        )
        info = await finished(client, job_id)
        assert info.state == "succeeded", info.error
        assert info.result is not None and info.result["engine"] == "torch"
        assert info.result["metrics"]["accuracy"] >= 0.95
        assert info.result["metrics"]["export_check"]["label_agreement"] == 1.0
        served = await infer(
            client,
            "torch-digits",
            [
                {
                    "name": "image",
                    "datatype": "FP32",
                    "shape": [3, 8, 8],
                    "data": images[:3].ravel().tolist(),
                }
            ],
        )
        assert served["label"].tolist() == digits.target[:3].tolist()
        versions = (await client.get("/v2/repository/models/torch-digits/versions")).json()
        assert versions["versions"][0]["framework"] == "torch"


async def test_torch_engine_without_torch_is_a_400(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import maas_server.training_job

    monkeypatch.setattr(maas_server.training_job, "torch_available", lambda: False)
    digits = load_digits()
    async with training_app(tmp_path) as (_, client):
        await upload_npz(client, "digits", image=digits.images, digit=digits.target)
        body = {"type": "training", "dataset": "digits", "target": "digit", "name": "t"}
        answer = await client.post("/v2/jobs", json={**body, "engine": "torch"})
        assert answer.status_code == 400
        assert "engine 'torch' needs PyTorch on the server" in answer.json()["error"]


async def test_trainings_beyond_max_trainings_wait_for_a_slot(tmp_path: Path) -> None:
    digits = load_digits()
    async with training_app(tmp_path, max_trainings=1, max_running_jobs=2) as (app, client):
        await upload_npz(client, "digits", image=digits.images, digit=digits.target)
        first = await create(client, dataset="digits", target="digit", name="a", epochs=3)
        second = await create(client, dataset="digits", target="digit", name="b", epochs=3)
        one, two = await finished(client, first), await finished(client, second)
        assert one.state == two.state == "succeeded", (one.error, two.error)
        waited = [e for e in events(app, second, "log") if "training slot" in e.data["message"]]
        assert waited, events(app, second)
        assert one.finished is not None
        # the second trained only once the first was over
        assert events(app, second, "epoch")[0].time >= events(app, first, "epoch")[-1].time
