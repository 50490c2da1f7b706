"""The floor for an HTTP model server in Python: a bare Starlette app that only calls session.run.

It answers ``POST /v2/models/{model}/infer`` for binary-framed requests whose inputs are all
binary: it reads the JSON header (name, datatype, shape of each input) with no validation, views the
bytes that follow as numpy arrays, calls ``session.run`` right in the request handler (no thread
pool, no batching, no checks), and answers every output as binary. Anything it does not expect
fails with a 500. ``server_throughput.py`` measures maas against it; the session is built with the
same options as maas builds its own (all graph optimizations, intra-op threads = CPU count, one
inter-op thread), so the difference between the two is what the protocol implementation costs.

Run it alone::

    python benchmarks/bare_starlette.py model.onnx --port 8001
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["create_bare_app", "make_session"]

_HEADER = "inference-header-content-length"
_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "INT8": np.dtype("<i1"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_DATATYPE_OF = {dtype: name for name, dtype in _DTYPES.items()}


def make_session(path: Path | str, providers: list[str] | None = None) -> ort.InferenceSession:
    """A session with the options maas gives a one-instance model."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(
        str(path), sess_options=options, providers=providers or ["CPUExecutionProvider"]
    )


def create_bare_app(model_path: Path | str) -> Starlette:
    """The bare app over one model file (whatever name the URL gives, this model answers)."""
    session = make_session(model_path)
    output_names = [o.name for o in session.get_outputs()]

    async def infer(request: Request) -> Response:
        body = await request.body()
        header_length = int(request.headers[_HEADER])
        header = orjson.loads(body[:header_length])
        view = memoryview(body)
        offset = header_length
        feeds: dict[str, np.ndarray[Any, Any]] = {}
        for entry in header["inputs"]:
            size = entry["parameters"]["binary_data_size"]
            array = np.frombuffer(view[offset : offset + size], dtype=_DTYPES[entry["datatype"]])
            feeds[entry["name"]] = array.reshape(entry["shape"])
            offset += size
        results = session.run(output_names, feeds)
        outputs = [
            {
                "name": name,
                "datatype": _DATATYPE_OF[result.dtype],
                "shape": list(result.shape),
                "parameters": {"binary_data_size": result.nbytes},
            }
            for name, result in zip(output_names, results, strict=True)
        ]
        head = orjson.dumps({"model_name": request.path_params["model"], "outputs": outputs})
        return Response(
            b"".join([head, *(r.tobytes() for r in results)]),
            media_type="application/octet-stream",
            headers={_HEADER: str(len(head))},
        )

    async def health(request: Request) -> Response:
        return Response(b"{}", media_type="application/json")

    return Starlette(
        routes=[
            Route("/v2/models/{model}/infer", infer, methods=["POST"]),
            Route("/v2/health/ready", health, methods=["GET"]),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve one ONNX model with a bare Starlette app.")
    parser.add_argument("model", type=Path, help="the .onnx file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    uvicorn.run(
        create_bare_app(args.model), host=args.host, port=args.port, log_level=args.log_level
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
