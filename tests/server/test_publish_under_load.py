"""Publishing while the previous version serves under load (a real server, clients in threads
sending requests in a loop): no request fails, and answers switch to the new version at one
moment: every answer of the old version began before every answer of the new one ended."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np

from maas_server import Settings
from tests.conftest import start_server
from tests.server.publishing import X, infer_body, mlp_bytes, mlp_reference, publish_repository

CLIENTS = 4


def test_upload_under_load_switches_at_one_moment(tmp_path: Path) -> None:
    repo = publish_repository(tmp_path / "repo")
    running = start_server(Settings(repository=repo))
    stop = threading.Event()
    seen_new = [threading.Event() for _ in range(CLIENTS)]
    answers: list[list[tuple[float, float, int, str, list[float]]]] = [[] for _ in range(CLIENTS)]

    def hammer(index: int) -> None:
        with httpx.Client(base_url=running.url, timeout=30) as client:
            while not stop.is_set():
                began = time.monotonic()
                answer = client.post("/v2/models/mlp/infer", json=infer_body())
                ended = time.monotonic()
                body = answer.json()
                version = body.get("model_version", "")
                data = body["outputs"][0]["data"] if answer.status_code == 200 else []
                answers[index].append((began, ended, answer.status_code, version, data))
                if version == "2":
                    seen_new[index].set()

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(CLIENTS)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while sum(len(a) for a in answers) < 50:  # the load is on before the upload
            assert time.monotonic() < deadline
            time.sleep(0.01)
        published = httpx.put(
            f"{running.url}/v2/repository/models/mlp/versions/2",
            content=mlp_bytes(2),
            headers={"Content-Type": "application/octet-stream"},
            timeout=60,
        )
        assert published.status_code == 201, published.text
        for event in seen_new:
            assert event.wait(30), "a client never saw the new version"
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        running.stop()
    everything = [a for per_client in answers for a in per_client]
    assert all(status == 200 for _, _, status, _, _ in everything), {
        (s, v) for _, _, s, v, _ in everything if s != 200
    }
    for per_client in answers:
        versions = [int(v) for _, _, _, v, _ in per_client]
        assert versions == sorted(versions)  # monotonic, per client
    old = [a for a in everything if a[3] == "1"]
    new = [a for a in everything if a[3] == "2"]
    assert old and new
    assert max(began for began, *_ in old) < min(ended for _, ended, *_ in new)
    for seed, group in ((1, old), (2, new)):
        expected = mlp_reference(seed, X)[0]
        for *_, data in group[:: max(1, len(group) // 20)]:
            np.testing.assert_allclose(np.array(data, np.float32), expected, rtol=1e-4, atol=1e-5)
