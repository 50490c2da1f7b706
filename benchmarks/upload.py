"""Upload benchmark: publish a large ONNX model through a real ``maas serve`` and compare.

The model is one ``.onnx`` file of about ``--size-mb`` MB (one FP32 initializer summed and
added to the input). It is uploaded with ``PUT /v2/repository/models/big/versions/1`` as a
streamed body; the time to the 201 (receive, hash, validate with ONNX Runtime, publish) gives
MB/s next to a local ``shutil.copyfile`` of the same file. The server's peak RSS (``VmHWM`` of
``/proc/<pid>/status``) before and after the upload is compared with the model's size: a
server that streams the body to disk holds no copy of it beyond what ONNX Runtime needs to load
the model; a bare process that only creates the same session is measured alongside.

    python benchmarks/upload.py --size-mb 200
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.servers import free_port, maas_command, serve

__all__ = ["big_model", "main", "peak_rss_bytes", "run"]

MB = 1024 * 1024


def big_model(size_mb: float) -> onnx.ModelProto:
    """``y = x + sum(W)`` with ``W`` an FP32 initializer of ``size_mb`` MB."""
    count = max(1, int(size_mb * MB) // 4)
    weights = np.random.default_rng(0).standard_normal(count).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["W"], ["s"], keepdims=0),
            helper.make_node("Add", ["x", "s"], ["y"]),
        ],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(weights, "W")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def peak_rss_bytes(pid: int) -> int:
    """The peak resident set size of a process (``VmHWM``, Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


_ORT_ALONE = """
import sys
from pathlib import Path
import onnxruntime as ort

def hwm():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

before = hwm()
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
print(before, hwm())
"""


def ort_alone_growth(model_path: Path) -> int:
    """Peak RSS growth of a bare process that only creates an ONNX Runtime session."""
    done = subprocess.run(
        [sys.executable, "-c", _ORT_ALONE, str(model_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    before, after = (int(v) for v in done.stdout.split())
    return after - before


def run(size_mb: float, workdir: Path) -> dict[str, Any]:
    model_path = workdir / "big.onnx"
    model_path.write_bytes(big_model(size_mb).SerializeToString())
    size = model_path.stat().st_size
    started = time.perf_counter()
    shutil.copyfile(model_path, workdir / "copy.onnx")
    copy_s = time.perf_counter() - started
    (workdir / "copy.onnx").unlink()
    repository = workdir / "repository"
    repository.mkdir()
    port = free_port()
    with serve("maas", maas_command(repository, port), port, workdir / "server.log") as server:
        pid = server.process.pid
        baseline = peak_rss_bytes(pid)
        with model_path.open("rb") as body, httpx.Client(timeout=600, trust_env=False) as client:
            started = time.perf_counter()
            answer = client.put(
                f"{server.base_url}/v2/repository/models/big/versions/1",
                content=body,
                headers={"Content-Type": "application/octet-stream"},
            )
            upload_s = time.perf_counter() - started
        if answer.status_code != 201:
            raise RuntimeError(f"upload failed: {answer.status_code} {answer.text}")
        peak = peak_rss_bytes(pid)
        check = httpx.post(
            f"{server.base_url}/v2/models/big/infer",
            json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0] * 4}]},
            trust_env=False,
        )
        if check.status_code != 200:
            raise RuntimeError(f"the uploaded model does not answer: {check.text}")
    ort_growth = ort_alone_growth(model_path)
    return {
        "model_mb": size / MB,
        "ort_alone_growth_mb": ort_growth / MB,
        "ort_alone_growth_per_model_size": ort_growth / size,
        "copy_s": copy_s,
        "copy_mb_per_s": size / MB / copy_s,
        "upload_s": upload_s,
        "upload_mb_per_s": size / MB / upload_s,
        "rss_before_mb": baseline / MB,
        "rss_peak_mb": peak / MB,
        "rss_growth_mb": (peak - baseline) / MB,
        "rss_growth_per_model_size": (peak - baseline) / size,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=200.0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="maas-upload-bench-") as tmp:
        figures = run(args.size_mb, Path(tmp))
    print(f"model: {figures['model_mb']:.1f} MB (one .onnx file, streamed PUT)")
    print(f"{'what':<34} {'seconds':>9} {'MB/s':>9}")
    print(
        f"{'local shutil.copyfile':<34} {figures['copy_s']:>9.3f} {figures['copy_mb_per_s']:>9.1f}"
    )
    print(
        f"{'upload to 201 (incl. validation)':<34} {figures['upload_s']:>9.3f} "
        f"{figures['upload_mb_per_s']:>9.1f}"
    )
    print(f"{'server peak RSS':<34} {'MB':>9} {'x model':>9}")
    print(f"{'  before the upload':<34} {figures['rss_before_mb']:>9.1f}")
    print(f"{'  after the upload':<34} {figures['rss_peak_mb']:>9.1f}")
    print(
        f"{'  growth':<34} {figures['rss_growth_mb']:>9.1f} "
        f"{figures['rss_growth_per_model_size']:>9.2f}"
    )
    print(
        f"{'  ONNX Runtime session alone':<34} {figures['ort_alone_growth_mb']:>9.1f} "
        f"{figures['ort_alone_growth_per_model_size']:>9.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
