"""The blocking client is generated from the asynchronous one (``scripts/unasync.py``): the
committed ``maas_client/_sync`` must be what the script makes of ``maas_client/_async``."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path
from token import NAME
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "unasync.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("unasync_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_sync_code_is_up_to_date() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, f"run python scripts/unasync.py:\n{done.stdout}{done.stderr}"


def test_every_sync_module_is_generated_and_says_so() -> None:
    sources = sorted(p.name for p in (ROOT / "maas_client" / "_async").glob("*.py"))
    generated = sorted(p.name for p in (ROOT / "maas_client" / "_sync").glob("*.py"))
    assert sources == generated
    for name in generated:
        first = (ROOT / "maas_client" / "_sync" / name).read_text().splitlines()[0]
        assert (
            first
            == f"# generated from maas_client/_async/{name} by scripts/unasync.py; do not edit"
        )
        with (ROOT / "maas_client" / "_sync" / name).open("rb") as source:
            words = {t.string for t in tokenize.tokenize(source.readline) if t.type == NAME}
        assert not words & {"async", "await", "anext", "aclose", "aread"}, name


def test_check_reports_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = _script()
    target = tmp_path / "_sync"
    shutil.copytree(ROOT / "maas_client" / "_sync", target)
    monkeypatch.setattr(script, "TARGET", target)
    assert script.main(["--check"]) == 0
    edited = target / "_pipeline.py"
    edited.write_text(edited.read_text() + "\n# a hand edit\n")
    assert script.main(["--check"]) == 1
    assert script.main([]) == 0  # regenerated
    assert script.main(["--check"]) == 0
    assert "a hand edit" not in edited.read_text()
