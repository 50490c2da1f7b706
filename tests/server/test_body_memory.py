"""The body budget at full scale: sixteen concurrent 64 MiB bodies sent to a real ``maas serve``
process keep its peak RSS within the bound docs/security.md states (1.5 x
``max_inflight_body_bytes`` above what it held before, plus 64 MiB), and the server serves on."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper

from maas_wire.codec import HEADER_LENGTH
from tests import models
from tests.conftest import free_port

MIB = 1 << 20
BODY = 64 * MIB
BUDGET = 256 * MIB
ELEMENTS = BODY // 4


def _sum_model() -> object:
    """FP32 [-1, ELEMENTS] -> its row sums [-1, 1]: a big input, a tiny answer."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
        "sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", ELEMENTS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _post(port: int, header: bytes, payload: memoryview, answers: list[int]) -> None:
    """One request over a raw socket; a server that answers before reading the whole body (503)
    may close the connection while the body is still going out."""
    head = (
        f"POST /v2/models/sum/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/octet-stream\r\n{HEADER_LENGTH}: {len(header)}\r\n"
        f"Content-Length: {len(header) + len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        try:
            sock.sendall(head + header)
            sock.sendall(payload)
        except OSError:
            pass  # refused early: its answer is already on the way
        answer = b""
        try:
            while b"\r\n" not in answer:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except OSError:
            pass
    status = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/1.1 ") else b"0"
    answers.append(int(status))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_sixteen_concurrent_64_mib_bodies_stay_within_the_budget(tmp_path: Path) -> None:
    models.save(_sum_model(), tmp_path / "sum" / "1" / "model.onnx")
    (tmp_path / "sum" / "config.json").write_text(json.dumps({"max_batch_size": 1}))
    port = free_port()
    command = [
        sys.executable, "-c", "from maas_cli import main; main()", "serve", str(tmp_path),
        "--port", str(port), "--log-level", "warning",
        "--max-body-size", str(BODY + MIB), "--max-inflight-body-bytes", str(BUDGET),
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            assert time.monotonic() < deadline, "maas serve did not become ready"
            time.sleep(0.05)
        before = _kib(server.pid, "VmRSS")
        values = np.full(ELEMENTS, 0.5, dtype=np.float32)
        payload = memoryview(values.view(np.uint8))
        request = {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, ELEMENTS],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": BODY},
                }
            ]
        }
        header = json.dumps(request).encode()
        answers: list[int] = []
        threads = [
            threading.Thread(target=_post, args=(port, header, payload, answers)) for _ in range(16)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        peak = _kib(server.pid, "VmHWM")
        assert len(answers) == 16 and set(answers) <= {200, 503}, answers
        assert answers.count(200) >= 1  # bodies that fit were read and served
        growth_mib = (peak - before) / 1024
        bound_mib = 1.5 * BUDGET / MIB + 64
        served = answers.count(200)
        print(f"peak RSS growth {growth_mib:.0f} MiB (bound {bound_mib:.0f}), {served}/16 served")
        assert growth_mib <= bound_mib, (growth_mib, bound_mib, answers)
        alone: list[int] = []
        _post(port, header, payload, alone)  # the budget is free again: served
        assert alone == [200]
        assert httpx.get(f"{base}/v2/health/ready").status_code == 200
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.wait()
        if server.stderr is not None:
            server.stderr.close()
