"""The shell (curl) blocks of docs/publishing.md run as written against a real server."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx

from maas_server import Settings
from tests import models
from tests.conftest import start_server
from tests.server.publishing import publish_repository

DOC = Path(__file__).resolve().parents[2] / "docs" / "publishing.md"
_BASH = re.compile(r"^```bash\n(.*?)^```", re.DOTALL | re.MULTILINE)


def test_curl_blocks_run(tmp_path: Path) -> None:
    blocks = _BASH.findall(DOC.read_text(encoding="utf-8"))
    assert blocks and all("curl" in block for block in blocks)
    models.save(models.mlp_model(seed=2), tmp_path / "model.onnx")
    running = start_server(Settings(repository=publish_repository(tmp_path / "repo")))
    try:
        for block in blocks:
            script = block.replace("http://127.0.0.1:8000", running.url)
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr + done.stdout
        listed = httpx.get(f"{running.url}/v2/repository/models/digits_cli/versions").json()
        assert [v["version"] for v in listed["versions"]] == ["2"]
        assert listed["default"] == "2" and listed["serving"] == "2"
    finally:
        running.stop()
    assert (tmp_path / "repo" / "digits_cli" / "2" / "model.onnx").is_file()
