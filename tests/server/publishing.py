"""Helpers of the publishing tests: a repository with one served model, archives of version
folders (good and hostile), and the reference answers of the ``mlp`` versions."""

from __future__ import annotations

import copy
import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx

from tests import models

__all__ = [
    "external_data_folder",
    "infer_mlp",
    "mlp_bytes",
    "mlp_reference",
    "publish_repository",
    "tar_bytes",
    "zip_bytes",
]

PUBLISHED = "mlp"


def mlp_bytes(seed: int) -> bytes:
    data: bytes = models.mlp_model(seed=seed).SerializeToString()
    return data


def mlp_reference(seed: int, x: np.ndarray) -> np.ndarray:
    weights, biases = models.mlp_weights(seed=seed)
    hidden = np.maximum(x @ weights[0] + biases[0], 0)
    out: np.ndarray = hidden @ weights[1] + biases[1]
    return out


def publish_repository(root: Path) -> Path:
    """A repository with ``mlp`` version 1 (weights of seed 1)."""
    models.save(models.mlp_model(seed=1), root / PUBLISHED / "1" / "model.onnx")
    (root / PUBLISHED / "config.json").write_text(json.dumps({"max_batch_size": 64}))
    return root


X = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)


def infer_body() -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": X.ravel().tolist()}
        ]
    }


def check_answer(answer: httpx.Response) -> tuple[str, np.ndarray]:
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return body["model_version"], np.array(body["outputs"][0]["data"], dtype=np.float32)


async def infer_mlp(client: httpx.AsyncClient, name: str = PUBLISHED) -> tuple[str, np.ndarray]:
    """The version that answered an unversioned request, and its output."""
    return check_answer(await client.post(f"/v2/models/{name}/infer", json=infer_body()))


def assert_serves(version: str, output: np.ndarray, seed: int, expected_version: str) -> None:
    assert version == expected_version
    np.testing.assert_allclose(output, mlp_reference(seed, X)[0], rtol=1e-4, atol=1e-5)


def external_data_folder(folder: Path, seed: int) -> Path:
    """``model.onnx`` with its weights in ``weights.bin`` beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(models.mlp_model(seed=seed))
    onnx.save_model(
        model,
        str(folder / "model.onnx"),
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    return folder


def tar_bytes(folder: Path, *, gz: bool = True, prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=prefix + path.relative_to(folder).as_posix(), recursive=False)
    return buffer.getvalue()


def zip_bytes(folder: Path, *, prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, prefix + path.relative_to(folder).as_posix())
    return buffer.getvalue()


def hostile_tar(kind: str) -> bytes:
    """A tar holding a good model.onnx and one member that must be refused."""
    buffer = io.BytesIO()
    model = mlp_bytes(2)
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("model.onnx")
        info.size = len(model)
        tar.addfile(info, io.BytesIO(model))
        bad = tarfile.TarInfo(
            {"dotdot": "../escaped.txt", "absolute": "/tmp/escaped.txt"}.get(kind, "member")
        )
        data = b"x"
        if kind == "symlink":
            bad.type, bad.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            bad.type, bad.linkname = tarfile.LNKTYPE, "model.onnx"
        elif kind == "device":
            bad.type, bad.devmajor, bad.devminor = tarfile.CHRTYPE, 1, 3
        elif kind == "fifo":
            bad.type = tarfile.FIFOTYPE
        if bad.type == tarfile.REGTYPE:
            bad.size = len(data)
            tar.addfile(bad, io.BytesIO(data))
        else:
            tar.addfile(bad)
    return buffer.getvalue()


def hostile_zip(kind: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model.onnx", mlp_bytes(2))
        if kind == "symlink":
            info = zipfile.ZipInfo("link")
            info.external_attr = 0o120777 << 16
            archive.writestr(info, "/etc/passwd")
        else:
            archive.writestr(
                {"dotdot": "../escaped.txt", "absolute": "/tmp/escaped.txt"}[kind], b"x"
            )
    return buffer.getvalue()
