"""``maas jobs run|list|show|cancel|logs`` against a real server."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from maas_server import Settings
from tests import models
from tests.conftest import RunningServer, start_server
from tests.test_cli import maas, ok

ROWS = np.random.default_rng(3).standard_normal((100, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def jobs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("cli-jobs")
    models.save(models.mlp_model(), root / "mlp" / "1" / "model.onnx")
    (root / "mlp" / "config.json").write_text('{"max_batch_size": 64}')
    running = start_server(
        Settings(repository=root, data_dir=root.parent / "data", strict_readiness=False)
    )
    body = io.BytesIO()
    np.save(body, ROWS)
    answer = httpx.post(f"{running.url}/v2/datasets/rows?format=npy", content=body.getvalue())
    assert answer.status_code == 201, answer.text
    yield running
    running.stop()


def test_run_waits_and_shows_the_result(jobs_server: RunningServer) -> None:
    out = ok(maas(jobs_server.url, "jobs", "run", "mlp", "rows", "--batch-size", "32"))
    assert "succeeded" in out and "100/100 rows" in out and '"dataset"' in out


def test_run_no_wait_then_show_list_logs_cancel(jobs_server: RunningServer) -> None:
    job_id = ok(
        maas(jobs_server.url, "jobs", "run", "mlp", "rows", "--input", "input=array", "--no-wait")
    ).strip()
    assert len(job_id) == 32
    logs = ok(maas(jobs_server.url, "jobs", "logs", job_id, "--follow"))
    assert "state       succeeded" in logs and "progress" in logs
    shown = json.loads(ok(maas(jobs_server.url, "jobs", "show", job_id, "--json")))
    assert shown["state"] == "succeeded" and shown["spec"]["inputs"] == {"input": "array"}
    assert job_id in ok(maas(jobs_server.url, "jobs", "list"))
    again = maas(jobs_server.url, "jobs", "cancel", job_id)
    assert again.exit_code != 0 and "already succeeded" in again.output


def test_a_bad_mapping_is_reported(jobs_server: RunningServer) -> None:
    result = maas(jobs_server.url, "jobs", "run", "mlp", "rows", "--input", "nope=array")
    assert result.exit_code != 0 and "'inputs' names 'nope'" in result.output
    swapped = maas(jobs_server.url, "jobs", "run", "mlp", "rows", "-i", "array=input", "--json")
    assert json.loads(ok(swapped))["spec"]["inputs"] == {"input": "array"}  # COLUMN=INPUT too
    bad = maas(jobs_server.url, "jobs", "run", "mlp", "rows", "--input", "oops")
    assert bad.exit_code != 0 and "INPUT=COLUMN" in bad.output
